"""museformer_tools.checkpoint: the same one-line error from every console script that reads a checkpoint
(museformer-eval-ppl, museformer-sample) for a truncated, empty or foreign file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from needs import require_fairseq

require_fairseq()

from data_prep.config import TokenizerConfig  # noqa: E402
from lm_data import make_data_bin  # noqa: E402
from museformer_tools.checkpoint import TRUNCATED_HINT, CheckpointError, read_checkpoint  # noqa: E402

# The console scripts that read a checkpoint, with the arguments that get them as far as reading it.
CONSOLE_SCRIPTS = {
    "museformer-eval-ppl": ("museformer_tools.eval_ppl", lambda ckpt, data, out: [ckpt, "--data", data, "--cpu"]),
    "museformer-sample": ("museformer_tools.sample", lambda ckpt, data, out: [ckpt, "--data", data, "--out", out]),
}


def console_command(name):
    """The venv's console script ``name`` when it is there (what a user runs), else ``python -m module``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", CONSOLE_SCRIPTS[name][0]]


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """A data dir and three unreadable checkpoints: the first half of a real one, an empty file, a text file."""
    import torch

    tmp = tmp_path_factory.mktemp("bad_ckpt")
    data = make_data_bin(tmp, num_songs=8, seed=0)
    (data / "tokenizer.json").write_text(json.dumps(TokenizerConfig().to_dict()), encoding="utf-8")
    good = tmp / "good.pt"
    torch.save({"model": {"w": torch.randn(1000)}, "cfg": None}, good)
    raw = good.read_bytes()
    files = {"truncated": raw[: len(raw) // 2], "empty": b"", "foreign": b"not a checkpoint\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp / f"{name}.pt"
        paths[name].write_bytes(content)
    return data, paths


def test_every_console_script_gives_the_same_one_line_error(bad_checkpoints, tmp_path):
    """A truncated checkpoint (the empty and foreign ones go the same way, see test_read_checkpoint_errors)."""
    data, paths = bad_checkpoints
    kind = "truncated"
    messages = {}
    for name, (_module, argv) in CONSOLE_SCRIPTS.items():
        args = argv(str(paths[kind]), str(data), str(tmp_path / "out"))
        proc = subprocess.run(console_command(name) + args, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, f"{name}:\n{proc.stderr[-3000:]}"
        prefix = f"{name}: error: "
        assert lines[0].startswith(prefix), lines[0]
        messages[name] = lines[0][len(prefix):]
    assert len(set(messages.values())) == 1, messages
    message = messages["museformer-sample"]
    assert f"cannot read checkpoint {paths[kind]}" in message and TRUNCATED_HINT in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_read_checkpoint_errors(tmp_path, bad_checkpoints):
    _, paths = bad_checkpoints
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(str(tmp_path / "missing.pt"))
    for path in paths.values():
        with pytest.raises(CheckpointError, match="cannot read checkpoint") as err:
            read_checkpoint(str(path))
        assert "\n" not in str(err.value) and str(err.value).endswith(TRUNCATED_HINT)


def test_loading_a_checkpoint_patches_nothing_global(tmp_path):
    """Neither the tools' load_model nor fairseq's own loader (through the task's setup_task) swaps fairseq's
    PathManager or sys.excepthook: only training installs the atomic copies (MuseformerLMTask.begin_epoch)."""
    from test_sample import make_checkpoint, make_data_dir

    data = make_data_dir(tmp_path / "data")
    ckpt = make_checkpoint(data, tmp_path / "ckpt.pt")
    code = (
        "import sys\n"
        "from fairseq import checkpoint_utils\n"
        "before = (checkpoint_utils.PathManager, sys.excepthook)\n"
        "from museformer_tools.checkpoint import load_model\n"
        f"load_model({str(ckpt)!r}, {str(data)!r})\n"
        f"checkpoint_utils.load_model_ensemble_and_task([{str(ckpt)!r}], arg_overrides={{'data': {str(data)!r}}})\n"
        "print(checkpoint_utils.PathManager is before[0], sys.excepthook is before[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True"], proc.stdout + proc.stderr[-2000:]
