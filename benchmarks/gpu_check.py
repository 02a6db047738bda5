"""The one prepared GPU check (issue 9): CUDA tests, one FC-Attention layer vs flash SDPA, fairseq-train, sampling.

Writes ``OUT/report.md`` and ``OUT/report.json`` (and one log per part) always, also when a part fails: each part
runs in its own try/except and its failure, with the traceback, goes into the report. Exit status 0 only if every
requested part passed.

Device command (one call of the device tool; `.whl/` holds fairseq-fixed's sdist and the wheels of its missing
pure-Python dependencies, prepared as docs/benchmarks.md "GPU check" says; the check needs at most 8 minutes):

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT --fairseq-sdist .whl",
        carry=[".whl"], timeout_s=600)

Dry run on CPU: the same code paths at toy sizes, in under a minute (tests/test_gpu_check.py runs it):

    .venv/bin/python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check

Parts (``--parts a,b,c,d``; each has a time budget, ``BUDGET_S``, after which it stops and reports what it has):

a. ``pytest -m gpu tests/test_gpu.py`` in a subprocess: flex, sparse and dense agree on CUDA (fp32 and bf16,
   outputs and every gradient), the cached decoder equals the full forward on CUDA.
b. One FineCoarseAttention layer (512 wide, 8 heads), forward + backward, bf16, ~130-token bars, the paper's bar
   selection, 4k-32k tokens: impl flex and sparse against a causal SDPA layer on the flash kernel, in one run.
c. fairseq-train of the paper-size museformer_lm (~100 updates, 15,360-token truncation, bf16 and fp16) and of
   fairseq's transformer_lm of the same size: words/s, peak memory, torch.compile graph count.
d. Sampling tokens/s of the cached decoder (``incremental.forward_incremental``), batch 1 and batch 8.

(a) and (b) need no fairseq; (c) and (d) do: when ``import fairseq`` fails, ``--fairseq-sdist`` (a folder or file)
is installed into ``/tmp/gpu_check_fairseq_site`` (wheels first, then the sdists built with
``--no-build-isolation``; the built fairseq wheel is left in OUT, to be carried next time).
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import importlib
import importlib.util
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PARTS = ("a", "b", "c", "d")
# Seconds per part on the GPU: 8 minutes in all, the fairseq build included. A part gets its own budget plus what
# the parts before it left unused; past it, the part stops at its next measurement boundary and reports what it
# has (pytest is stopped; a fairseq-train run is interrupted and its logged updates still count). Guesses: no GPU
# was available when they were set; adjust them from the seconds per part of the first report.
BUDGET_S = {"setup": 100, "a": 70, "b": 80, "c": 190, "d": 40}
DRY_BUDGET_S = {"setup": 30, "a": 60, "b": 20, "c": 90, "d": 20}
GOALS = {16384: 0.5, 32768: 0.3}  # issue 9: FC-Attention fwd+bwd time <= this x SDPA-flash causal
STATS_PREFIX = "GPU_CHECK_STATS "  # the line the fairseq-train wrapper prints at exit
WRAPPER_FLAG = "--fairseq-train-wrapper"


@dataclass
class Sizes:
    """Everything that differs between the GPU check and its CPU dry run."""

    device: str
    layer_lengths: Tuple[int, ...]  # (b) tokens per song
    layer_dim: int
    layer_heads: int
    layer_dtype: torch.dtype  # (b); the dry run uses fp32: bf16 kernels on CPU are slow, not what is checked
    warmup: int  # (b) steps before timing (the first one, compile included, is reported on its own)
    repeats: int  # (b) timed steps
    songs: int  # (c) training songs
    song_tokens: Tuple[int, int]  # (c) song length range (some longer than the truncation: lengths vary)
    truncate: int  # (c) --truncate-train = --max-tokens = transformer_lm's --tokens-per-sample
    updates: int  # (c) --max-update
    log_interval: int
    museformer_arch: str
    transformer_size: Tuple[int, int, int, int]  # (c) layers, embed, heads, ffn
    precisions: Tuple[str, ...]  # (c)
    sample_model: Dict[str, int] = field(default_factory=dict)  # (d) size overrides; {} = paper size
    prompt: int = 64  # (d) prompt tokens after the BOS
    new_tokens: int = 512
    batches: Tuple[int, ...] = (1, 8)


GPU = Sizes("cuda", (4096, 8192, 16384, 32768), 512, 8, torch.bfloat16, 3, 5, 12, (12000, 17000), 15360, 100, 10,
            "museformer_lm", (4, 512, 8, 2048), ("bf16", "fp16"))
DRY = Sizes("cpu", (256, 512), 32, 2, torch.float32, 1, 2, 6, (300, 700), 512, 3, 1, "museformer_lm_tiny", (2, 64, 4, 128),
            ("fp32", "bf16"), dict(decoder_layers=2, decoder_embed_dim=64, decoder_ffn_embed_dim=128,
                                   decoder_attention_heads=4), 16, 24, (1, 8))


class PartSkipped(Exception):
    """A part that cannot run here (the reason is reported; a skipped part is not a passed one)."""


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt(x, digits=3) -> str:
    return "-" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))


# ----------------------------------------------------------------------------------------------- fairseq set-up
def have_fairseq(extra_path: List[str]) -> bool:
    """Whether ``import fairseq, fairseq_cli.train`` works with ``extra_path`` in front (in a subprocess: a
    half-built install must not break this process)."""
    code = "import fairseq, fairseq_cli.train"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(extra_path + [os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0


def install_plan(source: Path, target: Path, wheel_dir: Path) -> List[List[str]]:
    """pip commands that put fairseq-fixed and the packages beside it into ``target``.

    Every wheel in ``source`` (a folder, or one file) is installed first, with ``--no-deps``. The sdists (fairseq's,
    unless a fairseq_fixed wheel is there, and pure-Python ones that have no wheel, e.g.
    antlr4-python3-runtime 4.9.3) are then built into wheels in ``wheel_dir`` against the packages already
    importable (``--no-build-isolation``: the GPU machine has no network) and installed: a built fairseq wheel
    in the report folder can be carried next time instead of the sdist, which saves its build."""
    files = sorted(source.iterdir()) if source.is_dir() else [source]
    wheels = [f for f in files if f.name.endswith(".whl")]
    sdists = [f for f in files if f.name.endswith((".tar.gz", ".zip"))]
    fairseq_wheel = any(w.name.startswith("fairseq_fixed") for w in wheels)
    if not fairseq_wheel:
        if not any(f.name.startswith("fairseq") for f in sdists):
            raise PartSkipped(f"--fairseq-sdist {source} holds no fairseq_fixed wheel and no fairseq*.tar.gz sdist")
    else:
        sdists = [f for f in sdists if not f.name.startswith("fairseq")]
    pip = [sys.executable, "-m", "pip"]
    quiet = ["-q", "--no-index", "--no-deps", "--no-cache-dir"]
    install = pip + ["install"] + quiet + ["--no-compile", "--upgrade", "--target", str(target)]
    plan = [install + [str(w) for w in wheels]] if wheels else []
    if sdists:
        plan.append(pip + ["wheel"] + quiet + ["--no-build-isolation", "-w", str(wheel_dir)] + [str(f) for f in sdists])
        plan.append(install + ["--find-links", str(wheel_dir)] + [sdist_name(f) for f in sdists])
    return plan


def sdist_name(sdist: Path) -> str:
    """The project name of an sdist file name (``fairseq_fixed-0.12.3.1.tar.gz`` -> ``fairseq_fixed``)."""
    return re.sub(r"-[0-9][^-]*\.(tar\.gz|zip)$", "", sdist.name)


def ensure_fairseq(args, out: Path, log, budget: Budget) -> Tuple[bool, str, List[str]]:
    """(available, how, extra sys.path entries) for fairseq, installing it from --fairseq-sdist when needed."""
    target = Path(tempfile.gettempdir()) / "gpu_check_fairseq_site"  # kept: a second run on a warm machine reuses it
    if importlib.util.find_spec("fairseq") is not None:  # installed here (its import is tested by the parts)
        return True, "already importable", []
    if target.is_dir() and have_fairseq([str(target)]):
        return True, f"installed earlier into {target}", [str(target)]
    if not args.fairseq_sdist:
        return False, "fairseq is not installed and no --fairseq-sdist was given", []
    source = Path(args.fairseq_sdist)
    if not source.exists():
        return False, f"--fairseq-sdist {source} does not exist", []
    # CUDA_HOME would make fairseq's setup.py build its CUDA extensions with nvcc (minutes; not needed here).
    env = {k: v for k, v in os.environ.items() if k != "CUDA_HOME"}
    env.update(MAX_JOBS=str(os.cpu_count() or 4), PYTHONPATH=os.pathsep.join([str(target), env.get("PYTHONPATH", "")]))
    for cmd in install_plan(source, target, out):
        say("setup: pip " + cmd[3] + " " + " ".join(Path(c).name for c in cmd[4:] if not c.startswith("-"))[-200:])
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=max(5.0, budget.left()))
        if proc.returncode != 0:
            return False, f"pip install failed (exit {proc.returncode}); see setup.log", []
    if not have_fairseq([str(target)]):
        return False, f"installed into {target}, but `import fairseq` still fails; see setup.log", []
    return True, f"installed from {source} into {target}", [str(target)]


def use_path(extra: List[str]) -> None:
    """Make ``extra`` importable in this process too (the parts that build data or models with fairseq)."""
    for p in reversed(extra):
        if p not in sys.path:
            sys.path.insert(0, p)
    importlib.invalidate_caches()


# ----------------------------------------------------------------------------------------------- (a) CUDA tests
def part_a(sizes: Sizes, ctx) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-v", "-rs", "-p", "no:cacheprovider"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + ctx["path"] + [os.environ.get("PYTHONPATH", "")]))
    log_path = ctx["out"] / "a_pytest.log"
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(5.0, ctx["budget"].left()))
        except subprocess.TimeoutExpired:
            done = re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR)", log_path.read_text())
            raise RuntimeError(f"pytest stopped at the part's time budget; {len(done)} tests had finished "
                               f"({done.count('PASSED')} passed, {done.count('FAILED')} failed; a_pytest.log)")
    text = log_path.read_text()
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", text)}
    skips = [line for line in text.splitlines() if line.startswith("SKIPPED")]
    res = dict(command=" ".join(cmd[2:]), exit=proc.returncode, counts=counts, skipped=skips,
               summary=text.strip().splitlines()[-1] if text.strip() else "")
    # Without CUDA tests/test_gpu.py skips itself at import: pytest then reports "no tests collected" (exit 5).
    cpu_skip = sizes.device != "cuda" and proc.returncode == 5 and counts.get("skipped", 0) > 0
    if proc.returncode != 0 and not cpu_skip:
        raise RuntimeError(f"pytest exited {proc.returncode}: {res['summary']} (a_pytest.log)")
    if sizes.device == "cuda" and counts.get("passed", 0) == 0:
        raise RuntimeError(f"no CUDA test passed on a CUDA machine: {res['summary']}")
    return res


# --------------------------------------------------------------------------------- (b) one layer vs flash SDPA
def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def layer_step(method: str, length: int, sizes: Sizes):
    """(step, backward): one forward + backward of one layer over a fresh batch (plan / BlockMask built inside).

    On CPU the flex step is forward only: torch has no FlexAttention backward on CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench_attention import CausalSDPA, song_layout
    from museformer_plugin.attention import FineCoarseAttention
    from museformer_plugin.bar_layout import BarLayout, BarScheme

    dev, dtype, C = sizes.device, sizes.layer_dtype, sizes.layer_dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, length, C, generator=g).to(dev, dtype).requires_grad_()
    if method == "sdpa":
        m = CausalSDPA(C, sizes.layer_heads).to(dev, dtype)

        def step():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                m(x).float().square().mean().backward()
        return step, True
    lay = song_layout(length)
    layout = BarLayout(lay.bar_ids.to(dev), lay.num_complete_bars.to(dev))
    xs = torch.randn(1, layout.num_summary_slots, C, generator=g).to(dev, dtype).requires_grad_()
    m = FineCoarseAttention(C, sizes.layer_heads, impl=method).to(dev, dtype)
    scheme = BarScheme.from_args("museformer")
    backward = not (method == "flex" and dev != "cuda")

    def step():
        layout.cache.clear()  # a new batch: its block plan / BlockMask is built inside the timed step
        with torch.set_grad_enabled(backward):
            out, out_sum = m(x, xs, layout, scheme)
            loss = out.float().square().mean() + out_sum.float().square().mean()
        if backward:
            loss.backward()
    return step, backward


def time_layer(method: str, length: int, sizes: Sizes) -> dict:
    cuda = sizes.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    g0 = graphs()
    step, backward = layer_step(method, length, sizes)
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(sizes.warmup - 1):
        step()
    sync()
    times = []
    for _ in range(sizes.repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    peak = None
    if cuda:  # one more step alone: its peak above what was allocated before it (inputs, parameters, grads)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    med = statistics.median(times)
    return dict(median_ms=med * 1e3, min_ms=min(times) * 1e3, max_ms=max(times) * 1e3, n=len(times),
                first_step_s=first, compile_s=max(0.0, first - med), peak_mib=peak, new_graphs=graphs() - g0,
                backward=backward)


def part_b(sizes: Sizes, ctx) -> dict:
    rows = []
    for L in sizes.layer_lengths:
        row = dict(length=L)
        for method in ("sdpa", "flex", "sparse"):
            if ctx["budget"].left() <= 0:
                row[method] = dict(error="not run: part budget spent")
                continue
            try:
                row[method] = time_layer(method, L, sizes)
                r = row[method]
                say(f"b: {method:6s} L={L:6d} median {r['median_ms']:.2f} ms, first step {r['first_step_s']:.2f} s, "
                    f"peak {fmt(r['peak_mib'])} MiB")
            except Exception as err:  # one cell failing (e.g. out of memory) must not hide the others
                row[method] = dict(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
                say(f"b: {method} L={L}: {row[method]['error']}")
            if sizes.device == "cuda":
                torch.cuda.empty_cache()
        for method in ("flex", "sparse"):
            a, s = row[method].get("median_ms"), row["sdpa"].get("median_ms")
            row[f"{method}/sdpa time"] = a / s if a and s else None
            pa, ps = row[method].get("peak_mib"), row["sdpa"].get("peak_mib")
            row[f"{method}/sdpa memory"] = pa / ps if pa and ps else None
        row["goal"] = GOALS.get(L)
        rows.append(row)
    failed = [f"{m}@{r['length']}" for r in rows for m in ("sdpa", "flex", "sparse") if "error" in r[m]]
    res = dict(rows=rows, dtype=str(sizes.layer_dtype).replace("torch.", ""), dim=sizes.layer_dim, heads=sizes.layer_heads, device=sizes.device,
               note=("CPU dry run: flex is forward only (no FlexAttention backward on CPU), no memory figures"
                     if sizes.device != "cuda" else "times: CUDA events; peak: max_memory_allocated above the inputs"))
    if failed:
        res["failed_cells"] = failed
        raise PartFailed(res, f"cells failed or not run: {', '.join(failed)}")
    return res


class PartFailed(Exception):
    """A part that ran but did not pass, with the results it has."""

    def __init__(self, result: dict, message: str):
        super().__init__(message)
        self.result = result


# ----------------------------------------------------------------------------------------------- (c) training
def song_tokens(rng: random.Random, num_tokens: int, bar_tokens: int = 134) -> List[str]:
    """A REMIGEN2-shaped song of ``num_tokens`` tokens with bars of ~``bar_tokens`` tokens (bench_sampling's
    synthetic_song as symbols of tests/lm_data.py's dictionary): t-, then onsets o- with i- and p- d- v-, b-1."""
    toks: List[str] = []
    while len(toks) < num_tokens:
        n = max(8, int(rng.gauss(bar_tokens, bar_tokens / 5)))
        bar, onset = [f"t-{rng.randint(30, 40)}"], 0
        while len(bar) < n - 5 and onset < 47:
            bar += [f"o-{onset}", f"i-{rng.choice((0, 25, 43, 48, 80, 128))}"]
            for _ in range(rng.randint(1, 4)):
                bar += [f"p-{rng.randint(40, 90)}", f"d-{rng.randint(0, 30)}", f"v-{rng.randint(10, 25)}"]
            onset += rng.randint(1, 3)
        toks += bar + ["b-1"]
    return toks[:num_tokens]


def training_data(sizes: Sizes, work: Path) -> Path:
    import logging

    from lm_data import binarize

    logging.getLogger("fairseq_cli.preprocess").setLevel(logging.WARNING)

    rng = random.Random(0)
    songs = [song_tokens(rng, rng.randint(*sizes.song_tokens)) for _ in range(sizes.songs)]
    return binarize(work, {"train": songs, "valid": songs[:1]})


def train_argv(kind: str, precision: str, data: Path, sizes: Sizes) -> List[str]:
    argv = [str(data), "--user-dir", str(REPO / "museformer_plugin"), "--max-tokens", str(sizes.truncate),
            "--required-batch-size-multiple", "1", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
            "--adam-eps", "1e-9", "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50",
            "--weight-decay", "0.01", "--max-update", str(sizes.updates), "--no-save", "--disable-validation",
            "--num-workers", "0", "--seed", "1", "--log-format", "json", "--log-interval", str(sizes.log_interval)]
    if kind == "museformer_lm":
        # --attention-dropout 0: FlexAttention has no attention dropout, so only then does auto pick flex on CUDA.
        argv += ["--task", "museformer_lm", "--arch", sizes.museformer_arch, "--attention-dropout", "0",
                 "--truncate-train", str(sizes.truncate)]
    else:
        layers, dim, heads, ffn = sizes.transformer_size
        argv += ["--task", "language_modeling", "--arch", "transformer_lm", "--decoder-layers", str(layers),
                 "--decoder-embed-dim", str(dim), "--decoder-attention-heads", str(heads),
                 "--decoder-ffn-embed-dim", str(ffn), "--activation-fn", "gelu", "--decoder-normalize-before",
                 "--tokens-per-sample", str(sizes.truncate), "--max-target-positions", str(sizes.truncate),
                 "--sample-break-mode", "none"]
    if precision != "fp32":
        argv.append(f"--{precision}")
    if sizes.device != "cuda":
        argv.append("--cpu")
    return argv


def vm_hwm_mib():
    """This process's peak resident set (VmHWM; ru_maxrss would keep the parent's across fork + exec)."""
    try:
        from bench_attention import rss_kib

        return rss_kib("VmHWM") / 1024
    except (OSError, RuntimeError):  # no /proc (not Linux)
        return None


def fairseq_train_wrapper(argv: List[str]) -> None:
    """fairseq-train ARGV in this process, printing at exit one JSON line (``STATS_PREFIX``): peak CUDA memory,
    the memory allocated after each update (parameters, fp32 masters, Adam state), the peak resident set, and
    torch.compile's dynamo counters, with the graph count after every update."""
    from torch._dynamo.utils import counters

    from fairseq import trainer as fs_trainer
    from fairseq_cli import train as fs_train

    per_update = []
    original = fs_trainer.Trainer.train_step

    def train_step(self, *a, **k):
        out = original(self, *a, **k)
        alloc = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else None
        per_update.append((int(counters["stats"]["unique_graphs"]), alloc))
        return out

    fs_trainer.Trainer.train_step = train_step

    def report():
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        stats = dict(peak_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                     rss_peak_mib=vm_hwm_mib(),
                     after_update_mib=per_update[-1][1] if per_update else None,
                     graphs_per_update=[g for g, _ in per_update],
                     dynamo={k: dict(v) for k, v in counters.items()})
        print(STATS_PREFIX + json.dumps(stats), flush=True)

    atexit.register(report)
    sys.argv = ["fairseq-train", *argv]
    fs_train.cli_main()


class TrainingRun:
    """One fairseq-train run through the wrapper, in its own log (appended to ``c_train.log`` when it ends);
    interrupted with SIGINT (so that its exit report still prints) when its seconds run out."""

    def __init__(self, name: str, argv: List[str], ctx, seconds: float):
        self.name, self.ctx, self.deadline = name, ctx, time.perf_counter() + seconds
        self.log_path = ctx["work"] / f"train_{re.sub(r'[^a-z0-9]+', '_', name)}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore",
                   PYTHONPATH=os.pathsep.join(ctx["path"] + [os.environ.get("PYTHONPATH", "")]))
        if ctx["sizes"].device != "cuda":
            env["OMP_NUM_THREADS"] = "1"
        self.cmd = [sys.executable, str(Path(__file__).resolve()), WRAPPER_FLAG, *argv]
        self.log = open(self.log_path, "w")
        self.log.write(f"\n===== {name}\n$ {' '.join(self.cmd)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(self.cmd, cwd=ctx["work"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def finish(self) -> dict:
        interrupted = False
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            interrupted = True
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        text = self.log_path.read_text()
        with open(self.ctx["out"] / "c_train.log", "a") as f:
            f.write(text)
        return parse_training(self.name, text, self.proc.returncode, interrupted)


def parse_training(name: str, text: str, returncode: int, interrupted: bool) -> dict:
    """Words/s, words per batch, losses (fairseq's json train_inner records) and the wrapper's exit report."""
    records, stats = [], {}
    for line in text.splitlines():
        if line.startswith(STATS_PREFIX):
            stats = json.loads(line[len(STATS_PREFIX):])
        elif "{" in line:
            try:
                rec = json.loads(line[line.index("{"):])
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "wps" in rec:  # train_inner records (the epoch summary has train_wps)
                records.append(rec)
    if returncode != 0 and not (interrupted and records):
        tail = "\n".join(text.splitlines()[-15:])
        raise RuntimeError(f"{name}: fairseq-train exited {returncode}{' (time budget)' if interrupted else ''}"
                           f":\n{tail}")
    timed = records[1:] if len(records) > 1 else records  # the first interval holds start-up and compilation
    g = stats.get("graphs_per_update", [])
    return dict(wps=statistics.median(float(r["wps"]) for r in timed) if timed else None,
                wpb=statistics.median(float(r["wpb"]) for r in timed) if timed else None,
                updates=int(records[-1].get("num_updates", 0)) if records else 0,
                loss_first=float(records[0]["loss"]) if records else None,
                loss_last=float(records[-1]["loss"]) if records else None,
                peak_mib=stats.get("peak_mib"), rss_peak_mib=stats.get("rss_peak_mib"),
                after_update_mib=stats.get("after_update_mib"), graphs=g[-1] if g else None,
                last_new_graph_at_update=max((i + 1 for i in range(len(g)) if g[i] > (g[i - 1] if i else 0)),
                                             default=None),
                dynamo_frames=stats.get("dynamo", {}).get("frames"), interrupted=interrupted)


def part_c(sizes: Sizes, ctx) -> dict:
    if not ctx["fairseq"]:
        raise PartSkipped(ctx["fairseq_how"])
    data = training_data(sizes, ctx["work"])
    runs = [(kind, prec) for kind in ("museformer_lm", "transformer_lm") for prec in sizes.precisions]
    # Shares of the budget per run (two precisions each); museformer_lm gets more: it compiles FlexAttention (CUDA).
    shares = {"museformer_lm": 0.3, "transformer_lm": 0.2}
    # On the GPU one run at a time (each has the GPU to itself); the CPU dry run starts two at a time, since
    # its runs are mostly fairseq's start-up, one core each.
    wave = 1 if sizes.device == "cuda" else 2
    results = {}
    for w in range(0, len(runs), wave):
        started = []
        for kind, prec in runs[w : w + wave]:
            name = f"{kind} {prec}"
            seconds = min(ctx["budget"].left(), shares[kind] * ctx["budget"].seconds * wave)
            if seconds <= 5:
                results[name] = dict(error="not run: part budget spent")
                continue
            say(f"c: {name} (at most {seconds:.0f} s)")
            started.append(TrainingRun(name, train_argv(kind, prec, data, sizes), ctx, seconds))
        for run in started:
            try:
                results[run.name] = r = run.finish()
                peak = r["peak_mib"] if r["peak_mib"] is not None else r["rss_peak_mib"]
                say(f"c: {run.name}: {r['updates']} updates, {fmt(r['wps'])} wps, peak {fmt(peak)} MiB, "
                    f"graphs {r['graphs']}")
            except Exception as err:
                results[run.name] = dict(error=f"{type(err).__name__}: {err}")
    comparison = {}
    for prec in sizes.precisions:
        mf, tf = results.get(f"museformer_lm {prec}", {}), results.get(f"transformer_lm {prec}", {})
        comparison[prec] = tokens_ratio(mf, tf)
    res = dict(runs=results, tokens_per_batch_comparison=comparison, method=TOKENS_METHOD,
               truncate=sizes.truncate, max_update=sizes.updates)
    failed = [n for n, r in results.items() if "error" in r or not r.get("wps")]
    if failed:
        raise PartFailed(res, f"runs failed or gave no words/s: {', '.join(failed)}")
    return res


TOKENS_METHOD = (
    "Both models train at the same --max-tokens (one song of up to --truncate-train tokens per batch). Memory per "
    "batch token = (peak CUDA memory - memory allocated after an update, i.e. parameters, fp32 masters and Adam "
    "state) / words per batch. tokens ratio = transformer_lm's memory per batch token / museformer_lm's: how many "
    "times more tokens museformer_lm fits in the same activation memory, assuming activation memory grows linearly "
    "with the batch at a fixed song length (true for more songs per batch). Goal: >= 3x. 'peak ratio' is the same "
    "with whole peaks. On CPU (dry run) the peak resident set stands in for the peak and there is no static part.")


def tokens_ratio(mf: dict, tf: dict) -> dict:
    def per_token(r, static):
        peak = r.get("peak_mib") or r.get("rss_peak_mib")
        if not peak or not r.get("wpb"):
            return None
        base = r.get("after_update_mib") if static else 0.0
        return (peak - (base or 0.0)) / r["wpb"]

    out = {}
    for key, static in (("tokens ratio", True), ("peak ratio", False)):
        a, b = per_token(mf, static), per_token(tf, static)
        out[key] = b / a if a and b else None
    out["goal"] = 3.0
    return out


# ----------------------------------------------------------------------------------------------- (d) sampling
def sampling_model(sizes: Sizes, work: Path):
    from lm_data import dict_symbols, make_task, write_dict
    from museformer_plugin.model import MuseformerLanguageModel, MuseformerModelConfig

    data = work / "sample_dict"
    data.mkdir(exist_ok=True)
    write_dict(data / "dict.txt", dict_symbols())
    task = make_task(data)
    # The prompt's prefill is one full forward in the model's impl: sparse, so that FlexAttention is not compiled
    # for that one call (every later step runs the decoding window, whatever the impl).
    cfg = MuseformerModelConfig(attention_impl="sparse", max_target_positions=100000, **sizes.sample_model)
    torch.manual_seed(0)
    return MuseformerLanguageModel.build_model(cfg, task).eval().to(sizes.device), task


@torch.no_grad()
def sample_rate(model, task, batch: int, sizes: Sizes) -> dict:
    """Tokens/s of ``new_tokens`` cached steps after a ``prompt``-token prefill, teacher-forced on synthetic
    songs (a random-weight model would sample no bar structure); each step still draws a top-8 sample per row."""
    from museformer_plugin.incremental import forward_incremental

    d, dev = task.dictionary, sizes.device
    rng = random.Random(batch)
    n = 1 + sizes.prompt + sizes.new_tokens
    rows = [[d.eos()] + [d.index(t) for t in song_tokens(rng, n - 1, 137)] for _ in range(batch)]
    tokens = torch.tensor(rows, device=dev)  # (B, n)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    state: dict = {}
    warm = min(8, sizes.new_tokens // 4)
    t_prefill = time.perf_counter()
    forward_incremental(model.decoder, tokens[:, : 1 + sizes.prompt], state)
    sync()
    t_prefill = time.perf_counter() - t_prefill
    g = torch.Generator(device=dev).manual_seed(0)
    for i, t in enumerate(range(1 + sizes.prompt, n)):
        if i == warm:
            sync()
            t0 = time.perf_counter()
        logits = forward_incremental(model.decoder, tokens[:, : t + 1], state)[0][:, -1].float()  # (B, V)
        kth = torch.topk(logits, 8).values[:, -1:]
        probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
        torch.multinomial(probs, 1, generator=g)  # drawn and discarded: the song's next token is fed
    sync()
    seconds = time.perf_counter() - t0
    steps = sizes.new_tokens - warm
    return dict(batch=batch, tokens_per_s=batch * steps / seconds, steps_per_s=steps / seconds, timed_steps=steps,
                prefill_s=t_prefill)


def part_d(sizes: Sizes, ctx) -> dict:
    if not ctx["fairseq"]:
        raise PartSkipped(ctx["fairseq_how"])
    model, task = sampling_model(sizes, ctx["work"])
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for batch in sizes.batches:
        if ctx["budget"].left() <= 0:
            rows.append(dict(batch=batch, error="not run: part budget spent"))
            continue
        rows.append(sample_rate(model, task, batch, sizes))
        say(f"d: batch {batch}: {rows[-1]['tokens_per_s']:.1f} tokens/s")
    res = dict(rows=rows, parameters=params, dtype="float32", prompt=sizes.prompt, new_tokens=sizes.new_tokens)
    if any("error" in r for r in rows):
        raise PartFailed(res, "some batch sizes were not run")
    return res


# ----------------------------------------------------------------------------------------------- report
def header(args, sizes: Sizes) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or None
    except OSError:
        commit = None
    cuda = sizes.device == "cuda"
    return dict(gpu=torch.cuda.get_device_name(0) if cuda else "none (CPU dry run)", torch=torch.__version__,
                cuda=torch.version.cuda, python=platform.python_version(), machine=platform.machine(),
                cpus=os.cpu_count(), date=datetime.datetime.now().isoformat(timespec="seconds"), commit=commit,
                command=" ".join([Path(sys.executable).name] + sys.argv), dry_run=args.dry_run)


def write_report(out: Path, head: dict, parts: dict) -> None:
    (out / "report.json").write_text(json.dumps(dict(header=head, parts=parts), indent=1, default=str))
    md = ["# GPU check report", ""]
    md += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in head.items()]
    for name, p in parts.items():
        md += ["", f"## {name}: {p['status']} ({p.get('seconds', 0):.0f} s)", ""]
        if p.get("reason"):
            md.append(f"Reason: {p['reason']}\n")
        r = p.get("result") or {}
        md += RENDER.get(name, lambda r: [])(r)
        if p.get("traceback"):
            md += ["", "```", p["traceback"].rstrip(), "```"]
    (out / "report.md").write_text("\n".join(md) + "\n")


def render_a(r):
    return [f"`{r.get('command')}`: {r.get('summary')}", ""] + [f"- {s}" for s in r.get("skipped", [])]


def render_b(r):
    lines = [f"{r.get('device')}, {r.get('dtype')}, embed {r.get('dim')}, {r.get('heads')} heads. {r.get('note')}.",
             "", "| tokens | sdpa ms | flex ms | sparse ms | flex/sdpa | sparse/sdpa | goal | flex/sdpa mem | "
             "sparse/sdpa mem | peak MiB sdpa / flex / sparse | first step s sdpa / flex / sparse |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r.get("rows", []):
        ms = [fmt(row[m].get("median_ms")) if "error" not in row[m] else "error" for m in ("sdpa", "flex", "sparse")]
        peak = " / ".join(fmt(row[m].get("peak_mib")) for m in ("sdpa", "flex", "sparse"))
        first = " / ".join(fmt(row[m].get("first_step_s")) for m in ("sdpa", "flex", "sparse"))
        goal = f"<= {row['goal']}" if row.get("goal") else "-"
        lines.append(f"| {row['length']} | {' | '.join(ms)} | {fmt(row['flex/sdpa time'])} | "
                     f"{fmt(row['sparse/sdpa time'])} | {goal} | {fmt(row['flex/sdpa memory'])} | "
                     f"{fmt(row['sparse/sdpa memory'])} | {peak} | {first} |")
    return lines


def render_c(r):
    lines = ["| run | updates | words/s | words/batch | peak MiB | after update MiB | loss first → last | graphs | "
             "last new graph at update |", "|---|---|---|---|---|---|---|---|---|"]
    for name, x in r.get("runs", {}).items():
        if "error" in x:
            lines.append(f"| {name} | {x['error'].splitlines()[0]} |||||||")
            continue
        peak = x["peak_mib"] if x["peak_mib"] is not None else x["rss_peak_mib"]
        lines.append(f"| {name} | {x['updates']}{' (budget)' if x['interrupted'] else ''} | {fmt(x['wps'])} | "
                     f"{fmt(x['wpb'])} | {fmt(peak)} | {fmt(x['after_update_mib'])} | {fmt(x['loss_first'])} → "
                     f"{fmt(x['loss_last'])} | {fmt(x['graphs'])} | {fmt(x['last_new_graph_at_update'])} |")
    lines += ["", "Tokens per batch, museformer_lm vs transformer_lm: " + json.dumps(
        r.get("tokens_per_batch_comparison"), default=str), "", r.get("method", "")]
    return lines


def render_d(r):
    lines = [f"{r.get('parameters')} parameters, {r.get('dtype')}, prompt {r.get('prompt')}, "
             f"{r.get('new_tokens')} new tokens", "", "| batch | tokens/s | steps/s | prefill s |", "|---|---|---|---|"]
    lines += [f"| {x['batch']} | {fmt(x.get('tokens_per_s'))} | {fmt(x.get('steps_per_s'))} | {fmt(x.get('prefill_s'))} |"
              for x in r.get("rows", [])]
    return lines


RENDER = {"a": render_a, "b": render_b, "c": render_c, "d": render_d}
RUN = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Example: python benchmarks/gpu_check.py "
                                "--dry-run --out /tmp/gpu_check", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for report.md, report.json and the logs (created)")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, the same code paths (< 1 min)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of a,b,c,d (default: all)")
    p.add_argument("--fairseq-sdist", default=None, metavar="PATH",
                   help="fairseq-fixed sdist, or a folder with it and wheels of its dependencies (e.g. .whl), "
                   "installed when `import fairseq` fails")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        p.exit(2, f"gpu_check.py: --parts takes a comma-separated subset of a,b,c,d; got {args.parts!r}\n")
    args.parts = parts
    if args.fairseq_sdist and not Path(args.fairseq_sdist).exists():
        p.exit(2, f"gpu_check.py: --fairseq-sdist {args.fairseq_sdist} does not exist; give the fairseq-fixed sdist "
               "or the folder holding it (docs/benchmarks.md, GPU check)\n")
    if not args.dry_run and not torch.cuda.is_available():
        p.exit(2, "gpu_check.py: torch sees no CUDA GPU here; pass --dry-run to run the CPU toy version\n")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WRAPPER_FLAG]:
        fairseq_train_wrapper(argv[1:])
        return 0
    args = parse_args(argv)
    sizes = DRY if args.dry_run else GPU
    budgets = DRY_BUDGET_S if args.dry_run else BUDGET_S
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = header(args, sizes)
    say(f"{head['gpu']}, torch {head['torch']}, CUDA {head['cuda']}; parts {','.join(args.parts)}")
    ctx = dict(out=out, sizes=sizes, work=Path(tempfile.mkdtemp(prefix="gpu_check_")), path=[], fairseq=False,
               fairseq_how="")
    parts: Dict[str, dict] = {}
    if {"a", "c", "d"} & set(args.parts):  # (a)'s cached-decoder test needs fairseq too
        t0 = time.perf_counter()
        setup_budget = Budget(budgets["setup"])
        with open(out / "setup.log", "w") as log:
            try:
                ctx["fairseq"], ctx["fairseq_how"], ctx["path"] = ensure_fairseq(args, out, log, setup_budget)
            except Exception as err:
                ctx["fairseq_how"] = f"fairseq set-up failed: {type(err).__name__}: {err}"
        say(f"setup: fairseq {'available' if ctx['fairseq'] else 'unavailable'} ({ctx['fairseq_how']})")
        parts["setup"] = dict(status="passed" if ctx["fairseq"] else "skipped", reason=ctx["fairseq_how"],
                              seconds=time.perf_counter() - t0, unused=max(0.0, setup_budget.left()))
        if ctx["fairseq"]:
            use_path(ctx["path"])
    carry = parts.get("setup", {}).get("unused", 0.0)
    for name in args.parts:
        # A part's budget plus what the parts before it left unused: the total stays within the sum of BUDGET_S.
        ctx["budget"] = Budget(budgets[name] + carry)
        t0 = time.perf_counter()
        say(f"part {name}: start (budget {ctx['budget'].seconds:.0f} s)")
        try:
            parts[name] = dict(status="passed", result=RUN[name](sizes, ctx))
        except PartSkipped as err:
            parts[name] = dict(status="skipped", reason=str(err))
        except PartFailed as err:
            parts[name] = dict(status="failed", reason=str(err), result=err.result)
        except Exception as err:
            parts[name] = dict(status="failed", reason=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        parts[name]["seconds"] = time.perf_counter() - t0
        carry = max(0.0, ctx["budget"].left())
        say(f"part {name}: {parts[name]['status']} in {parts[name]['seconds']:.0f} s")
        write_report(out, head, parts)  # after every part: a later crash or kill keeps what ran
    write_report(out, head, parts)
    ok = all(parts[n]["status"] == "passed" for n in args.parts)
    say(f"report: {out / 'report.md'}; {'all parts passed' if ok else 'NOT all parts passed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
