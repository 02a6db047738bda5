"""Parts (a) CUDA tests, (b) one layer vs flash SDPA and (d) sampling of the GPU check; (c), fairseq-train, is in
``gpu_check_training.py``."""
from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from gpu_check_common import GOALS, REPO, PartFailed, PartSkipped, Sizes, fmt, say
from gpu_check_training import song_tokens


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
