"""run_scripts/train.sh: its --help, the launch commands it builds, a 2-process CPU run and a resume after SIGKILL.

The training runs use the tiny arch on a tiny binarised dataset (tests/lm_data.py) and take a few updates each.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_SH = REPO / "run_scripts" / "train.sh"

# Imported by every Python process started with PYTHONPATH=<this dir>: inside fairseq-train it records the sample
# ids each rank trains on (one line per batch: "<update> <id> <id> ..."), so the test can see what each rank did.
ID_HOOK = '''
import os, sys
if os.environ.get("MF_TEST_ID_LOG") and sys.argv and sys.argv[0].endswith("fairseq-train"):
    import fairseq.trainer as _trainer
    _orig_train_step = _trainer.Trainer.train_step

    def _logging_train_step(self, samples, raise_oom=False):
        path = os.environ["MF_TEST_ID_LOG"] + ".rank" + os.environ.get("RANK", "0")
        with open(path, "a") as f:
            for s in samples:
                if s and "id" in s:
                    f.write(" ".join(str(i) for i in [self.get_num_updates()] + s["id"].tolist()) + "\\n")
        return _orig_train_step(self, samples, raise_oom)

    _trainer.Trainer.train_step = _logging_train_step
'''


def script_env(**overrides):
    """Environment for train.sh: the venv's bin first on PATH, 1 thread per process, tiny model, frequent logs."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(OMP_NUM_THREADS="1", DEVICE="cpu", ARCH="museformer_lm_tiny", MAX_TOKENS="1024", WARMUP="10",
               LOG_INTERVAL="1", NUM_WORKERS="0", TENSORBOARD_DIR="")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_train(tmp_path, name, timeout=400, **overrides):
    """Run train.sh to completion; returns (returncode, log text)."""
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.run(["bash", str(TRAIN_SH)], env=script_env(**overrides), stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, cwd=tmp_path)
    return proc.returncode, log.read_text()


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    from lm_data import make_data_bin

    return make_data_bin(tmp_path_factory.mktemp("train_data"), num_songs=16, seed=0)


def test_help_lists_every_variable():
    out = subprocess.run(["bash", str(TRAIN_SH), "--help"], capture_output=True, text=True, check=True).stdout
    variables = re.findall(r'^([A-Z_]+)="\$\{\1[:-]', TRAIN_SH.read_text(), flags=re.M)
    assert len(variables) > 25, variables
    missing = [v for v in variables if not re.search(rf"^\s+{v}\b", out, flags=re.M)]
    assert not missing, f"--help does not describe {missing}"


def test_launch_commands_dry_run():
    """GPU and multi-node commands cannot run here; check the commands train.sh builds for them."""
    def dry(**env):
        clean = {"PATH": os.environ["PATH"], "DATA_BIN": "data-bin/x", "DRY_RUN": "1"}  # defaults only
        proc = subprocess.run(["bash", str(TRAIN_SH), "--batch-size", "1"], capture_output=True, text=True,
                              env={**clean, **{k: str(v) for k, v in env.items()}})
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = dry(DEVICE="cuda", NPROC=4, NNODES=2, NODE_RANK=1, MASTER_ADDR="10.0.0.1", MASTER_PORT=29123)
    assert rc == 0, out
    assert "torchrun --nnodes 2 --node_rank 1 --nproc_per_node 4 --master_addr 10.0.0.1 --master_port 29123" in out
    assert "run_rank.sh" in out and "--fp16" in out and "--cpu" not in out
    assert out.rstrip().endswith("--batch-size 1"), "extra arguments must come last"

    rc, out = dry(DEVICE="cuda", PRECISION="bf16")
    assert rc == 0 and "--bf16" in out and "torchrun" not in out, out
    # the paper's defaults (spec §4.1)
    for flag in ("--lr 5e-4", "--warmup-updates 16000", "--truncate-train 15360", "--truncate-valid 10240",
                 "--save-interval-updates 5000", "--weight-decay 0.01", "--adam-eps 1e-9", "--lr-scheduler inverse_sqrt",
                 r"--adam-betas \(0.9\,\ 0.98\)"):
        assert flag in out, f"{flag} missing from {out}"

    rc, out = dry(DEVICE="cpu", PRECISION="fp16")
    assert rc == 2 and "PRECISION=fp16 needs DEVICE=cuda" in out


def test_two_cpu_processes(tmp_path, data_bin):
    """2 gloo ranks train on different batches and write a checkpoint."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(ID_HOOK)
    id_log = tmp_path / "ids"
    rc, log = run_train(tmp_path, "two_procs", DATA_BIN=data_bin, SAVE_DIR=tmp_path / "ckpt", NPROC=2,
                        MASTER_PORT=29000 + os.getpid() % 1000, MAX_UPDATE=2, SAVE_INTERVAL_UPDATES=2,
                        PYTHONPATH=hook, MF_TEST_ID_LOG=id_log)
    assert rc == 0, log[-5000:]
    assert "training on 2 devices" in log
    assert "initialized host" in log and "as rank 1" in log
    assert re.search(r"num_updates[ =]2\b", log), log[-3000:]
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()

    per_rank = {rank: [list(map(int, line.split()))[1:] for line in Path(f"{id_log}.rank{rank}").read_text().splitlines()]
                for rank in (0, 1)}
    assert all(len(batches) == 2 for batches in per_rank.values()), per_rank  # one batch per update per rank
    songs = {rank: {i for batch in batches for i in batch} for rank, batches in per_rank.items()}
    assert songs[0] and songs[1]
    assert not songs[0] & songs[1], f"both ranks trained on songs {songs[0] & songs[1]}"


def test_resume_after_sigkill(tmp_path, data_bin):
    """A run killed with SIGKILL after a checkpoint restarts from checkpoint_last.pt and keeps counting updates."""
    save_dir = tmp_path / "ckpt"
    common = dict(DATA_BIN=data_bin, SAVE_DIR=save_dir, NPROC=1, SAVE_INTERVAL_UPDATES=2)
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(["bash", str(TRAIN_SH)], env=script_env(MAX_UPDATE=10000, **common), stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    saved = None
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            found = re.findall(r"Saved checkpoint \S+ \(epoch \d+ @ (\d+) updates", log_path.read_text())
            if found:
                saved = int(found[-1])
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group this test started
        proc.wait(timeout=60)
    assert saved is not None, log_path.read_text()[-5000:]
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself (rc {proc.returncode}) instead of being killed"

    rc, log = run_train(tmp_path, "resumed", MAX_UPDATE=saved + 2, **common)
    assert rc == 0, log[-5000:]
    loaded = re.search(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", log)
    assert loaded, log[-5000:]
    assert int(loaded.group(1)) >= saved
    first = re.search(r"num_updates=(\d+)", log)
    assert first and int(first.group(1)) == int(loaded.group(1)) + 1, "training restarted from update 0"
    assert re.search(rf"num_updates[ =]{saved + 2}\b", log)
