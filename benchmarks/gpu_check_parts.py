"""The four parts of the GPU check: (a) CUDA tests, (b) one layer vs flash SDPA, (c) fairseq-train, (d) sampling."""
from __future__ import annotations

import atexit
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import List

import torch

from gpu_check_common import GOALS, REPO, STATS_PREFIX, WRAPPER_FLAG, PartFailed, PartSkipped, Sizes, fmt, say


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
        self.cmd = [sys.executable, str(Path(__file__).resolve().with_name("gpu_check.py")), WRAPPER_FLAG, *argv]
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
