"""museformer-eval-ppl: perplexity at several lengths, equal to `fairseq-validate --truncate-test L` (spec §6.1)."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from needs import require_fairseq

require_fairseq()

from museformer_tools import eval_ppl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
USER_DIR = os.environ.get("USER_DIR", str(REPO / "museformer_plugin"))


def tool_env(**overrides):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data dir, checkpoint): museformer_lm_tiny trained for 3 updates with run_scripts/train.sh."""
    from lm_data import make_data_bin

    tmp = tmp_path_factory.mktemp("eval")
    data = make_data_bin(tmp, num_songs=12, seed=1)
    env = tool_env(DATA_BIN=data, SAVE_DIR=tmp / "ckpt", DEVICE="cpu", ARCH="museformer_lm_tiny", MAX_TOKENS=2048,
                   MAX_UPDATE=3, WARMUP=2, LR=1e-3, SAVE_INTERVAL_UPDATES=3, LOG_INTERVAL=1, NUM_WORKERS=0,
                   TENSORBOARD_DIR="")
    proc = subprocess.run(["bash", str(REPO / "run_scripts" / "train.sh")], env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    checkpoint = tmp / "ckpt" / "checkpoint_last.pt"
    assert checkpoint.is_file()
    return data, checkpoint


def test_json_has_every_length_and_counts(trained, tmp_path, capsys):
    data, checkpoint = trained
    out = tmp_path / "ppl.json"
    assert eval_ppl.main([str(checkpoint), "--data", str(data), "--lengths", "64,100000,256", "--json", str(out),
                          "--cpu"]) == 0
    printed = capsys.readouterr().out
    assert "whole (<= L)" in printed and "bits" in printed
    results = json.loads(out.read_text())
    assert sorted(results, key=int) == ["64", "256", "100000"]

    from lm_data import make_task

    task = make_task(data)
    task.load_dataset("test")
    sizes = task.datasets["test"].sizes  # untruncated source lengths (= target lengths)
    for length, r in results.items():
        L = int(length)
        assert r["songs"] == len(sizes)
        assert r["songs_whole"] == int((sizes <= L).sum())
        assert r["tokens"] == int(np_min(sizes, L).sum()), "every target of the first L tokens of each song counts"
        assert math.isclose(r["ppl"], 2 ** r["loss"], rel_tol=1e-9)
        assert math.isclose(r["nll_nats"], r["loss"] * math.log(2), rel_tol=1e-9)
    assert results["100000"]["songs_whole"] == len(sizes)
    assert results["64"]["songs_whole"] < len(sizes) and results["64"]["tokens"] < results["100000"]["tokens"]
    assert results["64"]["loss"] != results["100000"]["loss"]


def np_min(sizes, L):
    import numpy as np

    return np.minimum(sizes, L)


def test_equals_fairseq_validate(trained):
    """Same number as the paper's command, fairseq-validate --truncate-test L (one song per batch there)."""
    data, checkpoint = trained
    L = 96
    ours = eval_ppl.evaluate(str(checkpoint), str(data), "test", [L], device="cpu")[L]
    # --required-batch-size-multiple 1: with fairseq's default (8) fairseq-fixed's batch_by_size drops the last
    # partial batch, so fairseq-validate would silently score fewer songs.
    proc = subprocess.run(
        ["fairseq-validate", str(data), "--user-dir", USER_DIR, "--task", "museformer_lm", "--path", str(checkpoint),
         "--valid-subset", "test", "--truncate-test", str(L), "--batch-size", "1", "--required-batch-size-multiple",
         "1", "--cpu"],
        env=tool_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = re.search(r"valid on 'test' subset \| loss ([\d.]+) \| ppl ([\d.]+) \| .*wpb (\d+) \| bsz (\d+)",
                     proc.stdout + proc.stderr)
    assert line, (proc.stdout + proc.stderr)[-3000:]
    loss, ppl, wpb, bsz = float(line.group(1)), float(line.group(2)), int(line.group(3)), int(line.group(4))
    assert (wpb, bsz) == (ours["tokens"], ours["songs"]), "fairseq-validate scored other tokens or songs"
    assert abs(loss - ours["loss"]) <= 0.0005 + 1e-6, (loss, ours["loss"])  # fairseq prints 3 decimals
    assert abs(ppl - ours["ppl"]) <= 0.005 + 1e-3 * ppl, (ppl, ours["ppl"])


def test_clear_errors(tmp_path, capsys, trained):
    data, checkpoint = trained
    assert eval_ppl.main([str(tmp_path / "nope.pt"), "--data", str(data)]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert eval_ppl.main([str(checkpoint), "--data", str(tmp_path / "no-data")]) == 2
    assert "museformer-prep all" in capsys.readouterr().err
    assert eval_ppl.main([str(checkpoint), "--data", str(data), "--lengths", "10,-3"]) == 2
    assert "--lengths expects positive integers" in capsys.readouterr().err


def test_device_and_dtype_flags_and_their_old_aliases():
    """One convention with museformer-sample: --device auto|cpu|cuda (default auto) and --dtype; --cpu, --fp16 and
    --bf16 still parse for one release."""
    parse = eval_ppl.build_parser().parse_args
    args = parse(["ckpt.pt", "--data", "d"])
    assert (args.device, args.dtype, args.max_tokens) == ("auto", "fp32", None)
    assert (parse(["c", "--data", "d", "--cpu", "--bf16"]).device, parse(["c", "--data", "d", "--bf16"]).dtype) == \
        ("cpu", "bf16")
    assert vars(parse(["c", "--data", "d", "--fp16", "--device", "cuda"]))["dtype"] == "fp16"
    assert parse(["c", "--data", "d", "--device", "cpu", "--dtype", "bf16"]).dtype == "bf16"
