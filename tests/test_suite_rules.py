"""Rules for the test suite itself: every module that needs fairseq says so the same way (tests/needs.py).

A module that imports museformer_plugin (its __init__ imports fairseq), museformer_tools, fairseq or lm_data at module level must call
``require_fairseq()`` first, so that without fairseq all of them skip with one reason (``pytest -rs`` shows it) or,
under MUSEFORMER_REQUIRE_FAIRSEQ=1, all fail, instead of some erroring at collection and others skipping.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
NEEDS_FAIRSEQ = ("museformer_plugin", "museformer_tools", "fairseq", "fairseq_cli", "lm_data")
# Plain-PyTorch parts of the plugin: they import without fairseq (tests/test_no_fairseq.py checks it).
PLAIN_TORCH = ("museformer_plugin.attention", "museformer_plugin.bar_layout", "museformer_plugin.incremental",
               "museformer_plugin.fairseq_compat")


def top_level_imports(tree):
    """(line, module) of every module-level import, and the line of the first module-level require_fairseq()."""
    imports, required_at = [], None
    for node in tree.body:
        if isinstance(node, ast.Import):
            imports += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports.append((node.lineno, node.module))
        elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
              and getattr(node.value.func, "id", None) == "require_fairseq" and required_at is None):
            required_at = node.lineno
    return imports, required_at


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_fairseq_modules_call_require_fairseq_first(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports, required_at = top_level_imports(tree)
    needing = [(line, mod) for line, mod in imports if mod.split(".")[0] in NEEDS_FAIRSEQ
               and not any(mod == p or mod.startswith(p + ".") for p in PLAIN_TORCH)]
    if not needing:
        return
    assert required_at is not None, f"{path.name} imports {needing[0][1]} but never calls require_fairseq()"
    early = [(line, mod) for line, mod in needing if line < required_at]
    assert not early, f"{path.name}: {early} imported before require_fairseq() (line {required_at})"
    assert "importorskip(\"fairseq" not in path.read_text(), f"{path.name}: use require_fairseq(), not importorskip"


def test_without_fairseq_modules_skip_alike_or_fail(tmp_path):
    """With fairseq made unimportable, a fairseq module is skipped with the shared reason; with
    MUSEFORMER_REQUIRE_FAIRSEQ=1 it fails instead."""
    blocker = tmp_path / "fairseq"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('fairseq hidden by the test')\n")
    env = {k: v for k, v in os.environ.items() if k != "MUSEFORMER_REQUIRE_FAIRSEQ"}  # CI sets it: the skip case first
    env = dict(env, PYTHONPATH=os.pathsep.join([str(tmp_path), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(TESTS / "test_task.py"),
           str(TESTS / "test_bar_layout.py")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 5), out[-3000:]  # 5: every module skipped, so no test was collected
    assert "SKIPPED [2]" in out and "needs fairseq-fixed (install it with `make install`" in out, out  # one reason
    proc = subprocess.run(cmd, env=dict(env, MUSEFORMER_REQUIRE_FAIRSEQ="1"), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "MUSEFORMER_REQUIRE_FAIRSEQ=1 is set" in out, out[-3000:]
