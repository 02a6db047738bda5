"""Benchmark one FC-Attention layer (forward + backward): block-sparse vs dense reference vs full causal attention.

Not a test. Every (method, length) runs in a forked child process, so that its peak memory is measured alone:
peak = VmHWM (the process's resident-set high-water mark, /proc/self/status) minus VmRSS right before the first
forward, i.e. the extra resident memory of one forward + backward (activations kept for backward, gradients and
temporaries), without the inputs and parameters. The child sets glibc's mmap threshold to 64 KiB, so that every
large tensor is returned to the OS when freed and the resident set follows the live memory of each method alike.

Methods:
  sparse   FineCoarseAttention(impl="sparse"), the paper's bar selection (museformer preset), ~130-token bars
  dense    FineCoarseAttention(impl="dense"), the O(T²) boolean-mask reference
  sdpa     q/k/v/out Linear layers + F.scaled_dot_product_attention(is_causal=True): full causal attention
  fairseq  fairseq.modules.MultiheadAttention with the future mask, as fairseq's transformer_lm decoder calls it

Example (the numbers in docs/benchmarks.md):
  OMP_NUM_THREADS=1 python benchmarks/bench_attention.py --lengths 1024,2048,4096,8192,16384 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from museformer_plugin.attention import FineCoarseAttention  # noqa: E402
from museformer_plugin.attention import sparse as attention_sparse  # noqa: E402
from museformer_plugin.attention.sparse_plan import plan_bar_blocks  # noqa: E402
from museformer_plugin.bar_layout import BarLayout, BarScheme, dense_masks  # noqa: E402

METHODS = ("sparse", "dense", "sdpa", "fairseq")


def computed_pairs(plan, per_pair: int, budget: int = attention_sparse.CHUNK_ELEMENTS) -> int:
    """(query, key) pairs the sparse kernel computes for ``plan``, padding included (chunks as the CPU kernel cuts
    them)."""
    return sum((b1 - b0) * q * (a + k) for b0, b1, q, a, k in plan.chunks(per_pair, budget))


def song_layout(length: int, seed: int = 0, mean_bar: int = 130) -> BarLayout:
    """One song of ``length`` positions: BOS + bars of 130 ± 30 tokens (real LMD bars: 64-161, mean 134; spec
    §1.2); the last bar is left unfinished, as a truncated training sample."""
    rng = random.Random(seed)
    bar_ids = [0]
    bar = 1
    while len(bar_ids) < length:
        bar_ids += [bar] * min(max(1, int(rng.gauss(mean_bar, 30))), length - len(bar_ids))
        bar += 1
    ids = torch.tensor([bar_ids])
    # Bars that end before the last position are complete (their b-1 is inside the song).
    last_bar = int(ids[0, -1])
    return BarLayout(ids, torch.tensor([last_bar - 1]))


class CausalSDPA(torch.nn.Module):
    """A plain causal self-attention layer of the same size (q/k/v/out projections + SDPA)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


def build(method, length, dim, heads, dtype, device, block_size=256):
    """(step function running one forward + backward, description)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, length, dim, generator=g).to(device=device, dtype=dtype).requires_grad_()
    if method in ("sparse", "dense"):
        layout = song_layout(length)
        layout = BarLayout(layout.bar_ids.to(device), layout.num_complete_bars.to(device))
        S = layout.num_summary_slots
        xs = torch.randn(1, S, dim, generator=g).to(device=device, dtype=dtype).requires_grad_()
        m = FineCoarseAttention(dim, heads, impl=method, block_size=block_size).to(device=device, dtype=dtype)
        scheme = BarScheme.from_args("museformer")

        def step():
            layout.cache.clear()  # a new batch: its block plan is built inside the timed step
            out, out_sum = m(x, xs, layout, scheme)
            (out.float().square().mean() + out_sum.float().square().mean()).backward()
    elif method == "sdpa":
        m = CausalSDPA(dim, heads).to(device=device, dtype=dtype)

        def step():
            m(x).float().square().mean().backward()
    elif method == "fairseq":
        from fairseq.modules import MultiheadAttention

        m = MultiheadAttention(dim, heads, dropout=0.0, self_attention=True).to(device=device, dtype=dtype)
        xt = x.detach().transpose(0, 1).contiguous().requires_grad_()  # fairseq is Time x Batch x Channel

        def step():
            # transformer_lm's buffered_future_mask: a float (T, T) mask, -inf above the diagonal, rebuilt per call.
            future = torch.triu(torch.full((length, length), float("-inf"), device=device, dtype=dtype), 1)
            out, _ = m(query=xt, key=xt, value=xt, attn_mask=future, need_weights=False)
            out.float().square().mean().backward()
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return step


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def exact_rss():
    """Make the resident set track live memory: glibc otherwise raises its mmap threshold after the first large
    free and keeps later large blocks in its heap, so VmHWM would depend on the allocation history."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 16)  # blocks >= 64 KiB: mmap'ed, returned to the OS when freed
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 16)
    except OSError:  # not glibc: keep the default allocator behaviour
        pass


def worker(conn, method, length, args, mode):
    """mode "time": one burn-in step, then ``args.repeats`` timed steps, default allocator.
    mode "memory": one step with ``exact_rss()``; its peak extra resident memory (CPU) or allocated memory (CUDA).
    Two children, because the 64 KiB mmap threshold that makes the resident set exact also makes every large
    allocation fault its pages in afresh, which would slow down (and so distort) the timed steps."""
    try:
        if mode == "memory":
            exact_rss()
        torch.set_num_threads(1)
        if args.chunk_waste is not None:
            attention_sparse.CHUNK_WASTE = args.chunk_waste
        dtype = getattr(torch, args.dtype)
        step = build(method, length, args.dim, args.heads, dtype, args.device, args.block_size)
        cuda = args.device.startswith("cuda")
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        if mode == "memory":
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            base_rss = rss_kib("VmRSS")
            step()
            sync()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else (rss_kib("VmHWM") - base_rss) / 1024
            conn.send(dict(peak_mib=peak))
            return
        step()  # burn-in
        sync()
        times, cpu_times = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        conn.send(dict(times=cpu_times if args.clock == "cpu" else times, wall=times, cpu=cpu_times))
    except Exception as err:  # report, don't hang the parent
        conn.send(dict(error=f"{type(err).__name__}: {err}"))


def run_in_child(target, target_args, timeout):
    """Run ``target(conn, *target_args)`` in a forked child; its one message (a dict), or an error dict."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(child, *target_args))
    p.start()
    res = parent.recv() if parent.poll(timeout) else dict(error=f"timeout after {timeout} s")
    p.join(5)
    if p.is_alive():
        p.kill()
    if p.exitcode not in (0, None) and "error" not in res:
        res = dict(error=f"child exited with {p.exitcode} (killed for memory?)")
    return res


def run_child(method, length, args, mode):
    return run_in_child(worker, (method, length, args, mode), args.timeout)


def pair_counts(length, block_size=256, heads=8):
    """(attended pairs / full causal pairs, computed pairs of the sparse path / full causal pairs)."""
    layout = song_layout(length)
    scheme = BarScheme.from_args("museformer")
    S = layout.num_summary_slots
    reg_mask, sum_mask = dense_masks(layout, scheme)
    attended = int(reg_mask.sum()) + int(sum_mask.sum())
    causal = length * (length + 1) // 2
    plan = plan_bar_blocks(layout, scheme, length, S, block_size)
    computed = computed_pairs(plan, per_pair=heads)
    return attended / causal, computed / causal, S


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384", help="comma-separated sequence lengths")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=5, help="timed steps after one burn-in step, per round")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every (length, method) this many times in turn, each in a fresh child; the median "
                         "is over all rounds' steps")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--block-size", type=int, default=256, help="sparse: longest query block (--block-size)")
    ap.add_argument("--chunk-waste", type=float, default=None,
                    help="sparse: padding allowed per chunk (attention_sparse.CHUNK_WASTE; default: its value)")
    ap.add_argument("--dense-max", type=int, default=4096,
                    help="skip the dense reference above this length (its (T, S+T) fp32 scores per head do not "
                         "fit in memory / take minutes)")
    ap.add_argument("--skip", default="", help="method:length pairs to skip, e.g. fairseq:16384")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                    help="time to report: process CPU time (robust on a shared machine; one thread) or wall clock")
    ap.add_argument("--json", default="", help="also write the raw results to this file")
    args = ap.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("warning: set OMP_NUM_THREADS=1 for comparable single-thread CPU numbers", file=sys.stderr)
    lengths = [int(x) for x in args.lengths.split(",")]
    methods = args.methods.split(",")
    skip = set(args.skip.split(",")) if args.skip else set()
    results = {}
    for rnd in range(args.rounds):
        # Rounds interleave the methods over time, so that a slow period of a shared machine hits them all.
        for L in lengths:
            for method in methods:
                if (method == "dense" and L > args.dense_max) or f"{method}:{L}" in skip:
                    results[(method, L)] = dict(error="skipped")
                    continue
                prev = results.get((method, L))
                if prev is not None and "error" in prev:
                    continue
                res = run_child(method, L, args, "time")
                if "error" not in res and prev is None:
                    res["peak_mib"] = run_child(method, L, args, "memory").get("peak_mib", math.nan)
                if prev is not None and "error" not in res:
                    # Concatenate into new lists: "times" may be the very list object of "cpu" or "wall".
                    res = dict(prev, **{key: prev[key] + res[key] for key in ("times", "wall", "cpu")})
                results[(method, L)] = res
                if "error" in res:
                    print(f"{method:8s} L={L:6d}  {res['error']}", flush=True)
                else:
                    t = res["times"]
                    print(f"round {rnd + 1}: {method:8s} L={L:6d}  median {statistics.median(t) * 1e3:9.1f} ms  "
                          f"(min {min(t) * 1e3:.1f}, max {max(t) * 1e3:.1f}, n={len(t)})  "
                          f"peak +{res['peak_mib']:.0f} MiB  (wall median {statistics.median(res['wall']) * 1e3:.0f} ms)",
                          flush=True)
    print()
    print_table(results, lengths, methods, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{m}:{L}": r for (m, L), r in results.items()}, f, indent=1)


def print_table(results, lengths, methods, args):
    def med(m, L):
        r = results.get((m, L), {})
        return statistics.median(r["times"]) if "times" in r else math.nan

    def peak(m, L):
        r = results.get((m, L), {})
        return r.get("peak_mib", math.nan)

    head = ["L", "bars", "attended/causal", "computed/causal"]
    head += [f"{m} ms (min-max)" for m in methods] + [f"{m} MiB" for m in methods]
    head += ["sparse/sdpa time", "sparse/fairseq time", "sparse/dense time", "sparse/fairseq mem"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    scaling = []
    prev = None
    for L in lengths:
        att, comp, S = pair_counts(L, args.block_size, args.heads)
        row = [str(L), str(S + 1), f"{att:.3f}", f"{comp:.3f}"]
        for m in methods:
            r = results.get((m, L), {})
            if "times" in r:
                t = r["times"]
                row.append(f"{statistics.median(t) * 1e3:.0f} ({min(t) * 1e3:.0f}-{max(t) * 1e3:.0f})")
            else:
                row.append(r.get("error", "-"))
        row += [f"{peak(m, L):.0f}" for m in methods]
        s = med("sparse", L)
        row += [f"{s / med('sdpa', L):.3f}", f"{s / med('fairseq', L):.3f}", f"{s / med('dense', L):.3f}",
                f"{peak('sparse', L) / peak('fairseq', L):.3f}"]
        print("| " + " | ".join(row) + " |")
        if prev is not None:
            scaling.append(f"sparse time({L})/time({prev}) = {s / med('sparse', prev):.2f}")
        prev = L
    print("\n".join(scaling))


if __name__ == "__main__":
    main()
