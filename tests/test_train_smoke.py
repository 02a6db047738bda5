"""fairseq CLIs with the plugin: train (batch > 1) → checkpoint → fairseq-validate, fairseq-eval-lm → resume.

A few seconds of CPU training of museformer_lm_tiny on 40 synthetic songs (tests/lm_data.py).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from needs import require_fairseq

require_fairseq()

from lm_data import REPO_ROOT, make_data_bin  # noqa: E402

USER_DIR = str(REPO_ROOT / "museformer_plugin")
# the tokenizer settings of lm_data's dictionary (REMIGEN2, lmd6 instruments, no s- tokens)
SMOKE_TOKENIZER = {"encoding": "remigen2", "instruments": "lmd6", "ignore_ts": True}


def fairseq_cli(name: str, *args, cwd) -> str:
    """Run ``fairseq-<name>`` (the venv's console script) and return stdout + stderr; fail on a non-zero exit."""
    script = Path(sys.executable).parent / f"fairseq-{name}"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", f"fairseq_cli.{name.replace('-', '_')}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"fairseq-{name} failed (exit {proc.returncode}):\n{out[-4000:]}"
    return out


def json_records(log: str):
    """The JSON log lines of ``--log-format json`` (one dict per line, after the logger prefix)."""
    records = []
    for line in log.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                records.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                pass
    return records


def train_args(data_dir, save_dir, max_update):
    return [
        data_dir, "--user-dir", USER_DIR, "--task", "museformer_lm", "--arch", "museformer_lm_tiny", "--cpu",
        "--max-tokens", 1024, "--num-workers", 0,
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", 3e-3,
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", 10,
        "--dropout", 0.0, "--attention-dropout", 0.0,
        "--max-update", max_update, "--save-dir", save_dir, "--no-epoch-checkpoints",
        "--log-format", "json", "--log-interval", 5, "--seed", 1, "--truncate-train", 512,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    data_dir = make_data_bin(tmp, num_songs=40, seed=0)
    # museformer-prep writes the tokenizer settings beside dict.txt; the checkpoints carry both (see the last test)
    (data_dir / "tokenizer.json").write_text(json.dumps(SMOKE_TOKENIZER), encoding="utf-8")
    save_dir = tmp / "ckpt"
    log = fairseq_cli("train", *train_args(data_dir, save_dir, 30), cwd=tmp)
    return tmp, data_dir, save_dir, log


def test_train_loss_goes_down_with_batches(trained):
    _, _, save_dir, log = trained
    recs = json_records(log)
    steps = [r for r in recs if "loss" in r and "bsz" in r]  # per-interval training stats
    assert len(steps) >= 4, log[-3000:]
    assert all(float(r["bsz"]) > 1 for r in steps), "batches must hold more than one song"
    first, last = float(steps[0]["loss"]), float(steps[-1]["loss"])
    assert last < first - 0.5, f"training loss did not go down: {first} -> {last}"
    assert (save_dir / "checkpoint_last.pt").exists() and (save_dir / "checkpoint_best.pt").exists()
    assert any(float(r.get("train_num_updates", 0)) == 30 for r in recs)


def last_valid_loss(log: str) -> float:
    return [float(r["valid_loss"]) for r in json_records(log) if "valid_loss" in r][-1]


def test_validate_and_eval_lm_agree_with_training(trained):
    tmp, data_dir, save_dir, log = trained
    ckpt = save_dir / "checkpoint_last.pt"
    # One process scores two subsets: valid (whole songs) and test (first 64 tokens of each song).
    out = fairseq_cli("validate", data_dir, "--user-dir", USER_DIR, "--task", "museformer_lm", "--path", ckpt,
                      "--valid-subset", "valid,test", "--truncate-test", 64, "--batch-size", 3, "--cpu",
                      "--log-format", "json", cwd=tmp)
    val_loss = last_valid_loss(out)
    # fairseq-validate reduces all batches at once, so "wpb" is the total number of scored tokens: the first 64
    # tokens of every test song, and nothing else.
    from lm_data import make_task

    expected = int(make_task(data_dir, truncate_test=64).load_dataset("test").sizes.sum())
    stats = [r for r in json_records(out) if "test_wpb" in r][-1]  # keys are prefixed with the subset name
    assert float(stats["test_wpb"]) == expected
    # Same checkpoint, same split, same loss as the validation at the end of training (logged to 3 decimals).
    assert abs(val_loss - last_valid_loss(log)) < 2e-3, (val_loss, last_valid_loss(log))

    out = fairseq_cli("eval-lm", data_dir, "--user-dir", USER_DIR, "--task", "museformer_lm", "--path", ckpt,
                      "--gen-subset", "valid", "--batch-size", 2, "--cpu", cwd=tmp)
    m = re.search(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+)", out)
    assert m, out[-3000:]
    loss2, ppl = float(m.group(1)), float(m.group(2))
    # eval-lm and validate both average the base-2 NLL over all target tokens (pad excluded).
    assert abs(loss2 - val_loss) < 2e-3, (loss2, val_loss)
    assert 1.0 < ppl < 100.0, ppl


def test_checkpoint_loads_in_process(trained):
    """The checkpoint holds no pickled argparse Namespace (torch.load weights-only works), and the loaded model
    derives the same bar/beat ids as the dataset (its beat LUT follows the task's --beat-mask-ts)."""
    import torch
    from fairseq import checkpoint_utils

    import museformer_plugin  # noqa: F401  (registers the task and model in this process)

    _, data_dir, save_dir, _ = trained
    ckpt = save_dir / "checkpoint_last.pt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["cfg"]["model"]["_name"] == "museformer_lm_tiny"
    assert state["cfg"]["model"]["decoder_embed_dim"] == 64
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides={"data": str(data_dir)})
    model = models[0].eval()
    assert torch.equal(model.decoder.beat_lut, task.beat_lut)
    ds = task.load_dataset("valid")
    batch = ds.collater([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        with_ids = model(**batch["net_input"])[0]
        derived = model(batch["net_input"]["src_tokens"])[0]
    assert torch.allclose(with_ids, derived, atol=1e-6)


def test_resume_continues(trained):
    tmp, data_dir, save_dir, _ = trained
    log = fairseq_cli("train", *train_args(data_dir, save_dir, 36), cwd=tmp)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 30 updates\)", log), log[-3000:]
    updates = [float(r["train_num_updates"]) for r in json_records(log) if "train_num_updates" in r]
    assert updates and updates[-1] == 36


def test_checkpoint_carries_dictionary_and_tokenizer(trained):
    """fairseq saves the task's state_dict() as task_state: dict.txt's text and tokenizer.json's contents."""
    import torch
    from fairseq.data import Dictionary

    from museformer_tools.checkpoint import dictionary_from_checkpoint, tokenizer_config_from_checkpoint

    _, data_dir, save_dir, _ = trained
    state = torch.load(save_dir / "checkpoint_best.pt", weights_only=True, map_location="cpu")
    task_state = state["task_state"]
    assert isinstance(task_state["dictionary"], str) and task_state["tokenizer"] == SMOKE_TOKENIZER
    on_disk = Dictionary.load(str(data_dir / "dict.txt"))
    assert dictionary_from_checkpoint(state).symbols == on_disk.symbols
    assert dictionary_from_checkpoint(state).count == on_disk.count
    assert tokenizer_config_from_checkpoint(state) == SMOKE_TOKENIZER
    del state["task_state"]  # a checkpoint of an older version
    assert dictionary_from_checkpoint(state) is None and tokenizer_config_from_checkpoint(state) is None


def test_sample_needs_no_data_dir(trained, tmp_path):
    """museformer-sample CKPT --out DIR on a checkpoint written by fairseq-train, with its data dir gone."""
    _, data_dir, save_dir, _ = trained
    script = Path(sys.executable).parent / "museformer-sample"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "museformer_tools.sample"]
    hidden = data_dir.with_name(data_dir.name + "-hidden")
    data_dir.rename(hidden)  # the checkpoint's cfg still names data_dir: nothing may read it
    try:
        proc = subprocess.run(cmd + [str(save_dir / "checkpoint_best.pt"), "--out", str(tmp_path / "out"),
                                     "--num-samples", "2", "--max-tokens", "60", "--seed", "3"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    finally:
        hidden.rename(data_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "note:" not in proc.stderr, "the tokenizer config must come from the checkpoint"
    from data_prep.config import TokenizerConfig
    from data_prep.grammar import count_errors

    for k in range(2):
        tokens = (tmp_path / "out" / f"sample_{k:03d}.txt").read_text(encoding="utf-8").split()
        assert (tmp_path / "out" / f"sample_{k:03d}.mid").is_file() and 1 <= len(tokens) <= 60
        assert count_errors(tokens, TokenizerConfig.from_dict(SMOKE_TOKENIZER)) == 0  # grammar mask with the config
