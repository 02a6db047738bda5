"""Without fairseq, the plain-PyTorch parts import (a GPU machine tests attention before fairseq is built there),
and every fairseq-dependent module fails with the one set-up message."""
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

BLOCK_FAIRSEQ = '''
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fairseq" or name.startswith(("fairseq.", "fairseq_cli")):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
'''


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_FAIRSEQ + code], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


def test_attention_and_decoding_window_import_without_fairseq():
    proc = run("import museformer_plugin.attention.flex, museformer_plugin.attention.sparse, "
               "museformer_plugin.incremental, museformer_plugin.bar_layout; print('ok')")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_fairseq_modules_say_how_to_install_it():
    for module in ("model", "task", "dataset", "linear_lm"):
        proc = run(f"import museformer_plugin.{module}")
        assert proc.returncode != 0
        assert "run `make install`" in proc.stderr.splitlines()[-1], proc.stderr[-500:]
