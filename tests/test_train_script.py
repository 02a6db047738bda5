"""run_scripts/train.sh: --help, launch commands, 2 CPU processes = 1 process with twice the batch, resume.

The training runs use the tiny arch on a tiny binarised dataset (tests/lm_data.py) and take a few updates each.
Hooks inside fairseq-train (tests/train_hooks/sitecustomize.py) record batches and parameters and tell the test,
through a FIFO, the moment a checkpoint is complete (or half-copied), so that a kill is timed exactly, not by polling.
"""
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from needs import require_fairseq

require_fairseq()

REPO = Path(__file__).resolve().parents[1]
TRAIN_SH = REPO / "run_scripts" / "train.sh"

HOOKS = REPO / "tests" / "train_hooks"  # sitecustomize.py: test hooks inside fairseq-train, see its docstring
NO_DROPOUT = ("--dropout", "0", "--attention-dropout", "0")


def script_env(**overrides):
    """Environment for train.sh: the venv's bin first on PATH, 1 thread per process, tiny model, frequent logs,
    and the test hooks first on PYTHONPATH (each does nothing unless its MF_TEST_* variable is set)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS), str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(OMP_NUM_THREADS="1", DEVICE="cpu", ARCH="museformer_lm_tiny", MAX_TOKENS="1024", WARMUP="10",
               LOG_INTERVAL="1", NUM_WORKERS="0", TENSORBOARD_DIR="")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_train(tmp_path, name, *args, timeout=400, **overrides):
    """Run train.sh (extra fairseq-train ``args``) to completion; returns (returncode, log text)."""
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.run(["bash", str(TRAIN_SH), *args], env=script_env(**overrides), stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, cwd=tmp_path)
    return proc.returncode, log.read_text()


def run_until_fifo(tmp_path, name, *args, timeout=400, **overrides):
    """Start train.sh, block until its hook writes one line to the FIFO, SIGKILL it; returns (that line, log)."""
    fifo = tmp_path / f"{name}.fifo"
    os.mkfifo(fifo)
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(["bash", str(TRAIN_SH), *args], env=script_env(MF_TEST_SAVED_FIFO=fifo, **overrides),
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    line = ""
    try:
        # O_NONBLOCK: opening the read end does not wait for a writer; select() wakes up when the hook writes. The
        # 2 s timeout only notices a run that died before reporting; the kill itself is timed by the hook's line.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        deadline = time.monotonic() + timeout
        try:
            while not line.endswith("\n"):
                ready, _, _ = select.select([fd], [], [], 2.0)
                if ready:
                    chunk = os.read(fd, 4096).decode()
                    line += chunk
                    if not chunk and proc.poll() is not None:
                        break
                elif proc.poll() is not None or time.monotonic() > deadline:
                    break
        finally:
            os.close(fd)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group this test started
        proc.wait(timeout=60)
    log = log_path.read_text()
    assert line.endswith("\n"), f"the hook never reported (rc {proc.returncode}):\n{log[-5000:]}"
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself (rc {proc.returncode}) instead of being killed"
    return line.strip(), log


def load_state(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_training_state(resumed, reference):
    """Two checkpoints hold the same parameters, Adam moments and step, lr scheduler state and update count."""
    import torch

    a, b = load_state(resumed), load_state(reference)
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"]
    assert a["optimizer_history"][-1]["lr_scheduler_state"] == b["optimizer_history"][-1]["lr_scheduler_state"]
    assert a["model"].keys() == b["model"].keys()
    # Bitwise: one thread, no dropout randomness outside fairseq's per-update seed, the same batches in the same
    # order; a resume that lost any state (moments, lr, data position) differs by far more than rounding.
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"parameter {name} differs"
    opt_a, opt_b = a["last_optimizer_state"], b["last_optimizer_state"]
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"]
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for key in opt_a["state"]:
        for field in ("step", "exp_avg", "exp_avg_sq"):
            va, vb = opt_a["state"][key][field], opt_b["state"][key][field]
            assert torch.equal(torch.as_tensor(va), torch.as_tensor(vb)), f"optimizer {field} of param {key} differs"


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

    rc, out = dry(DEVICE="cpu", PRECISION="bf16")  # half precision trains on CPU too (tests/test_half_precision.py)
    assert rc == 0 and "--bf16" in out and "--cpu" in out and "usually slower than fp32" in out, out


def read_batches(id_log, rank):
    """{update: [sample ids of each batch trained at that update]} from the ID hook's log of one rank."""
    out = {}
    for line in Path(f"{id_log}.rank{rank}").read_text().splitlines():
        update, *ids = map(int, line.split())
        out.setdefault(update, []).append(ids)
    return out


def test_two_cpu_processes_equal_one_process_with_twice_the_batch(tmp_path, data_bin):
    """2 gloo ranks train on different batches and end with identical parameters, equal to 1 process that
    accumulates the same two batches per update (--update-freq 2)."""
    import torch

    common = dict(DATA_BIN=data_bin, MAX_UPDATE=3, SAVE_INTERVAL_UPDATES=3, MAX_TOKENS=512, MF_TEST_PARAMS_AT="2,3")
    rc, log = run_train(tmp_path, "two_procs", *NO_DROPOUT, SAVE_DIR=tmp_path / "ckpt2", NPROC=2,
                        MASTER_PORT=29000 + os.getpid() % 1000, MF_TEST_ID_LOG=tmp_path / "ids2",
                        MF_TEST_PARAMS_OUT=tmp_path / "params2", **common)
    assert rc == 0, log[-5000:]
    assert "training on 2 devices" in log
    assert "initialized host" in log and "as rank 1" in log
    assert re.search(r"num_updates[ =]3\b", log), log[-3000:]
    assert (tmp_path / "ckpt2" / "checkpoint_last.pt").is_file()

    per_rank = {rank: read_batches(tmp_path / "ids2", rank) for rank in (0, 1)}
    assert all(sorted(b) == [0, 1, 2] and all(len(v) == 1 for v in b.values()) for b in per_rank.values()), per_rank
    songs = {rank: {i for batches in b.values() for batch in batches for i in batch} for rank, b in per_rank.items()}
    assert songs[0] and songs[1]
    assert not songs[0] & songs[1], f"both ranks trained on songs {songs[0] & songs[1]}"

    rank0, rank1 = (torch.load(f"{tmp_path / 'params2'}.u3.rank{r}") for r in (0, 1))
    for name in rank0:  # the all-reduced gradient is the same tensor on both ranks, so are the Adam steps
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"

    rc, log = run_train(tmp_path, "one_proc", *NO_DROPOUT, SAVE_DIR=tmp_path / "ckpt1", NPROC=1, UPDATE_FREQ=2,
                        MF_TEST_ID_LOG=tmp_path / "ids1", MF_TEST_PARAMS_OUT=tmp_path / "params1", **common)
    assert rc == 0, log[-5000:]
    single = read_batches(tmp_path / "ids1", 0)
    for update in range(3):  # the same two batches per update: rank 0's, then rank 1's
        assert single[update] == per_rank[0][update] + per_rank[1][update], (update, single, per_rank)
    one = torch.load(f"{tmp_path / 'params1'}.u3.rank0")
    # Tolerance: both runs sum the same two per-batch gradients (g0 + g1, one fp32 addition either way); they differ
    # only in where the 1/world_size and 1/ntokens scalings are rounded (legacy_ddp divides the all-reduced sum by
    # 2, the trainer multiplies by 2/ntokens), i.e. ~1 ulp (6e-8 relative) of each gradient. Adam's step is
    # lr * m / (sqrt(v) + eps), scale-free in g, so its relative error stays at that level: with lr <= 1e-3 over
    # 3 updates the parameters can differ by ~1e-3 * 3 * 1e-7 ~ 3e-10. 1e-7 leaves a wide margin for rounding, and
    # is still far below one update (lr * warm-up factor ~ 1e-4): a lost or doubled gradient fails it.
    for name in one:
        diff = (one[name] - rank0[name]).abs().max().item()
        assert diff <= 1e-7, f"{name}: 2 processes vs 1 process with --update-freq 2 differ by {diff}"
    before = torch.load(f"{tmp_path / 'params1'}.u2.rank0")
    one_update = max((one[n] - before[n]).abs().max().item() for n in one)
    assert one_update > 1e-5, f"the last update moved the parameters by only {one_update}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_bin):
    """checkpoint_last.pt of an uninterrupted 4-update run, the same settings as the interrupted ones below."""
    tmp = tmp_path_factory.mktemp("reference")
    rc, log = run_train(tmp, "reference", DATA_BIN=data_bin, SAVE_DIR=tmp / "ckpt", NPROC=1, SAVE_INTERVAL_UPDATES=2,
                        MAX_UPDATE=4)
    assert rc == 0, log[-5000:]
    return tmp / "ckpt" / "checkpoint_last.pt"


def resume_and_compare(tmp_path, data_bin, save_dir, from_update, reference):
    """Resume in ``save_dir`` up to update 4; it must load ``from_update`` and end exactly as ``reference``."""
    rc, log = run_train(tmp_path, "resumed", DATA_BIN=data_bin, SAVE_DIR=save_dir, NPROC=1, SAVE_INTERVAL_UPDATES=2,
                        MAX_UPDATE=4)
    assert rc == 0, log[-5000:]
    loaded = re.search(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", log)
    assert loaded and int(loaded.group(1)) == from_update, log[-5000:]
    first = re.search(r"num_updates=(\d+)", log)
    assert first and int(first.group(1)) == from_update + 1, "training restarted from update 0"
    assert_same_training_state(save_dir / "checkpoint_last.pt", reference)


def test_resume_after_sigkill(tmp_path, data_bin, reference_run):
    """Killed right after a complete checkpoint (the hook reports it and freezes the run), the run resumes with the
    same parameters, Adam state, learning rate, data position and update count as a run never interrupted."""
    save_dir = tmp_path / "ckpt"
    line, log = run_until_fifo(tmp_path, "killed", DATA_BIN=data_bin, SAVE_DIR=save_dir, NPROC=1,
                               SAVE_INTERVAL_UPDATES=2, MAX_UPDATE=10000)
    assert line == "saved 2", (line, log[-3000:])
    assert load_state(save_dir / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"] == 2
    resume_and_compare(tmp_path, data_bin, save_dir, 2, reference_run)


def test_kill_during_checkpoint_write(tmp_path, data_bin, reference_run):
    """SIGKILL while the second save copies the new checkpoint onto checkpoint_last.pt (half of it written).

    fairseq copies with shutil.copyfile straight onto the destination, which would leave a truncated
    checkpoint_last.pt; the task makes that copy atomic (atomic_checkpoints.py), so checkpoint_last.pt is still the
    complete update-2 checkpoint, the update-4 one is intact under its own name, and training resumes from update 2.
    """
    save_dir = tmp_path / "ckpt"
    line, log = run_until_fifo(tmp_path, "killed_in_save", DATA_BIN=data_bin, SAVE_DIR=save_dir, NPROC=1,
                               SAVE_INTERVAL_UPDATES=2, MAX_UPDATE=10000, MF_TEST_BREAK_COPY=2)
    assert line.startswith("partial "), (line, log[-3000:])
    partial = Path(line.split(" ", 1)[1])
    assert partial.parent == save_dir and partial.name != "checkpoint_last.pt", "the copy went onto the final name"
    last = load_state(save_dir / "checkpoint_last.pt")  # complete and readable
    assert last["optimizer_history"][-1]["num_updates"] == 2
    # The update-4 checkpoint was written (atomically) under its first name before the copies; it is intact.
    others = {f.name: load_state(f)["optimizer_history"][-1]["num_updates"]
              for f in save_dir.glob("*.pt") if f.name != "checkpoint_last.pt"}
    newest = [name for name, updates in others.items() if updates == 4]
    assert newest, others
    assert 0 < partial.stat().st_size < (save_dir / newest[0]).stat().st_size  # the kill hit mid-copy
    resume_and_compare(tmp_path, data_bin, save_dir, 2, reference_run)
