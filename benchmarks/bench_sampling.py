"""Sampling speed: KV-cached incremental decoding vs recomputing the whole prefix (the original's way, spec §7).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sampling.py --contexts 1024,4096,8192 --headline 20480

Model: ``museformer_lm`` (paper size: 4 layers, 512 hidden, 8 heads, FFN 2048), random weights, eval mode, fp32.
Tokens: a synthetic REMIGEN2 song with realistic bars (``--bar-tokens`` tokens per bar on average; the spec's
example song has 134.5, the paper's data ~158). A random-weight model would sample a meaningless bar layout (almost
never ``b-1``), so every step computes the logits, the top-k filter and a multinomial draw exactly as sampling
does, and then feeds the song's next token instead of the drawn one (teacher forcing): the work per step is that
of sampling, with the bar layout of real music.

* cached: one pass over the song with ``forward_incremental``; tokens/s is measured over ``--window`` steps right
  after each context length.
* full recompute: the decoder's full forward over the whole prefix at a context length (``--attention-impl``
  sparse, the fast one), timed over ``--full-steps`` steps.
* headline: wall time of a whole ``--headline``-token song with the cached decoder, for each of ``--dtypes``
  (fp32 and bf16 weights in the same run), and the cache's size at its end.
* ``--goals``: the sampling goals of issue 11, measured side by side in one run: bf16 vs fp32 log-probs of a fixed
  song (the sampled distribution), batch ``--batch`` vs batch 1 tokens/s, a ``--prefill``-token prompt in one call
  vs token by token, and the cache size at the headline length vs the previous implementation's.

    .venv/bin/python benchmarks/bench_sampling.py --headline-only --headline 20480 --dtypes fp32,bf16 \
        --threads 2 --goals
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_model(impl: str, seed: int):
    """The paper-size model on a REMIGEN2 dictionary (the tokenizer's lmd6 config), random weights."""
    import tempfile

    from data_prep.config import TokenizerConfig
    from data_prep.vocab import write_dict
    from museformer_plugin.model import MuseformerLanguageModel, MuseformerModelConfig
    from museformer_plugin.task import MuseformerLMConfig, MuseformerLMTask

    data = Path(tempfile.mkdtemp(prefix="bench_sampling_"))
    write_dict(data / "dict.txt", TokenizerConfig(instruments="lmd6", ignore_ts=True))
    task = MuseformerLMTask.setup_task(MuseformerLMConfig(data=str(data), seed=seed, dataset_impl=None))
    cfg = MuseformerModelConfig(attention_impl=impl, max_target_positions=100000)
    torch.manual_seed(seed)
    return MuseformerLanguageModel.build_model(cfg, task).eval(), task


def synthetic_song(task, num_tokens: int, bar_tokens: int, seed: int) -> torch.Tensor:
    """[BOS] + a REMIGEN2-shaped song: per bar t-, then onsets o- with i- and p- d- v- notes, then b-1."""
    rng = random.Random(seed)
    d = task.dictionary
    ids = [d.eos()]
    while len(ids) < num_tokens + 1:
        n = max(8, int(rng.gauss(bar_tokens, bar_tokens / 5)))
        bar = [f"t-{rng.randint(30, 40)}"]
        onset = 0
        while len(bar) < n - 5 and onset < 47:
            bar += [f"o-{onset}", f"i-{rng.choice((0, 25, 43, 48, 80, 128))}"]
            for _ in range(rng.randint(1, 4)):
                bar += [f"p-{rng.randint(40, 90)}", f"d-{rng.randint(0, 30)}", f"v-{rng.randint(10, 25)}"]
            onset += rng.randint(1, 3)
        ids += [d.index(t) for t in bar] + [task.bar_token]
    return torch.tensor(ids[: num_tokens + 1])


def sample_step(logits: torch.Tensor, generator: torch.Generator, top_k: int = 8) -> int:
    """Top-k sampling of the next token (computed and discarded: the song's token is fed instead)."""
    kth = torch.topk(logits, top_k).values[-1]
    probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def run_cached(model, song: torch.Tensor, marks, window: int, keep_state: bool = False):
    """One cached pass over ``song``; returns (total seconds, CPU seconds, {context: tokens/s over `window` steps
    after it}) and, with ``keep_state``, the cache."""
    from museformer_plugin.incremental import forward_incremental

    gen = torch.Generator().manual_seed(0)
    state: dict = {}
    times = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for t in range(song.numel()):
        t0 = time.perf_counter()
        logits = forward_incremental(model.decoder, song[None, : t + 1], state)[0][0, -1]
        sample_step(logits, gen)
        times.append(time.perf_counter() - t0)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    rates = {m: window / sum(times[m : m + window]) for m in marks if m + window <= len(times)}
    return (total, cpu, rates, state) if keep_state else (total, cpu, rates)


@torch.no_grad()
def run_full(model, song: torch.Tensor, context: int, steps: int) -> float:
    """Tokens/s of recomputing the whole prefix (context, context + 1, ...) at every step."""
    gen = torch.Generator().manual_seed(0)
    model(song[None, :context])  # burn-in (allocator, first-call overhead)
    t0 = time.perf_counter()
    for s in range(steps):
        logits = model(song[None, : context + s + 1])[0][0, -1]
        sample_step(logits, gen)
    return steps / (time.perf_counter() - t0)


def old_cache_bytes(model, num_positions: int, num_bars: int, window: int) -> int:
    """The previous cache (commit bec7808): fp32 keys/values of EVERY position and of the window, capacities
    doubled from 64 (positions, window) and 8 (summaries); computed from its allocation rule, not run."""
    def cap(n, start):
        c = start
        while c < n:
            c *= 2
        return c

    layer = model.decoder.layers[0].self_attn
    per_key = layer.num_heads * layer.head_dim * 4  # fp32
    per_layer = 2 * per_key * (cap(num_positions, 64) + cap(window, 64) + cap(num_bars + 2, 8))
    return len(model.decoder.layers) * per_layer


@torch.no_grad()
def log_probs(model, song: torch.Tensor) -> torch.Tensor:
    """log p(song[t + 1] | song[:t + 1]) for every t, through the cached decoder (prefill of the BOS, then steps)."""
    from museformer_plugin.incremental import forward_incremental

    state: dict = {}
    out = []
    for t in range(song.numel() - 1):
        logits = forward_incremental(model.decoder, song[None, : t + 1], state)[0][0, -1].float()
        out.append(torch.log_softmax(logits, -1)[song[t + 1]])
    return torch.stack(out)


@torch.no_grad()
def run_batch(model, songs: torch.Tensor, prompt: int, steps: int) -> float:
    """Tokens/s of ``steps`` cached steps for a batch of songs (B, L) after prefilling ``prompt`` tokens."""
    from museformer_plugin.incremental import forward_incremental

    gen = torch.Generator().manual_seed(0)
    state: dict = {}
    forward_incremental(model.decoder, songs[:, :prompt], state)
    t0 = time.perf_counter()
    for t in range(prompt, prompt + steps):
        logits = forward_incremental(model.decoder, songs[:, : t + 1], state)[0][:, -1].float()
        for row in logits:
            sample_step(row, gen)
    return songs.size(0) * steps / (time.perf_counter() - t0)


@torch.no_grad()
def run_prefill(model, song: torch.Tensor, n: int):
    """(seconds of one prefill call over n tokens, seconds of the same n tokens fed one per call)."""
    from museformer_plugin.incremental import forward_incremental

    t0 = time.perf_counter()
    forward_incremental(model.decoder, song[None, :n], {})
    one = time.perf_counter() - t0
    state: dict = {}
    t0 = time.perf_counter()
    for t in range(n):
        forward_incremental(model.decoder, song[None, : t + 1], state)
    return one, time.perf_counter() - t0


def cache_bytes(decoder, incremental_state) -> int:
    """Bytes held by the cached decoder's state (its buffers at their current capacity)."""
    from museformer_plugin.incremental import STATE_KEY

    state = decoder.get_incremental_state(incremental_state, STATE_KEY) or {}
    return sum(t.numel() * t.element_size() for t in state.values())


def goals(model, task, args):
    """The issue-11 comparisons, each measured side by side in this run."""
    print("## goals (side by side in this run)")
    song = synthetic_song(task, 1024, args.bar_tokens, args.seed + 2)
    lp = {}
    halves = [name for name in args.dtypes.split(",") if name != "fp32"] or ["bf16"]
    for name in ["fp32"] + halves:
        lp[name] = log_probs(model.to(DTYPES[name]), song)
    model.to(torch.float32)
    for name in halves:
        diff = (lp[name] - lp["fp32"]).abs()
        print(f"# log p of a fixed 1,024-token song, {name} vs fp32 weights: mean |diff| {float(diff.mean()):.4f} "
              f"nats, max {float(diff.max()):.4f}, mean log p fp32 {float(lp['fp32'].mean()):.3f}")

    songs = torch.stack([synthetic_song(task, 1024 + args.window, args.bar_tokens, args.seed + 10 + b)
                         for b in range(args.batch)])
    for name in args.dtypes.split(","):
        m = model.to(DTYPES[name])
        one = run_batch(m, songs[:1], 1024, args.window)
        many = run_batch(m, songs, 1024, args.window)
        print(f"# {name}: batch 1 {one:.1f} tokens/s, batch {args.batch} {many:.1f} tokens/s = {many / one:.2f}x "
              f"(steps {1024}..{1024 + args.window})")
    model.to(torch.float32)

    song = synthetic_song(task, args.prefill, args.bar_tokens, args.seed + 3)
    one, each = run_prefill(model, song, args.prefill)
    print(f"# prefill of a {args.prefill}-token prompt (fp32): one call {one:.2f} s, token by token {each:.1f} s "
          f"= {each / one:.1f}x")
    return cache_bytes


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        flags = set(fields.get("Flags", "").split())
        vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags]
        return (f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, flags "
                f"{'/'.join(vector) or 'none of avx2/avx512'}, torch CPU capability "
                f"{torch.backends.cpu.get_cpu_capability()}")
    except OSError:
        return platform.processor()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contexts", default="1024,4096,8192", help="context lengths in tokens (comma-separated)")
    p.add_argument("--window", type=int, default=200, help="cached steps timed after each context length")
    p.add_argument("--full-steps", type=int, default=3, help="full-recompute steps timed at each context length")
    p.add_argument("--bar-tokens", type=int, default=137, help="mean tokens per bar of the synthetic song")
    p.add_argument("--headline", type=int, default=0,
                   help="also time a whole song of this many tokens with the cached decoder (0 = skip)")
    p.add_argument("--headline-only", action="store_true", help="skip the context-length table")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtypes", default="fp32", help="weight dtypes of the headline and batch runs "
                   "(fp32,bf16,fp16); --goals checks the log p of each half-precision one against fp32")
    p.add_argument("--goals", action="store_true", help="also run the issue-11 comparisons (see the docstring)")
    p.add_argument("--batch", type=int, default=8, help="--goals: the batch compared with batch 1")
    p.add_argument("--prefill", type=int, default=4096, help="--goals: prompt length of the prefill comparison")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    contexts = [int(c) for c in args.contexts.split(",")]
    model, task = build_model("sparse", args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# {machine()}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; museformer_lm {n_params:,} parameters")

    if args.headline_only:
        contexts = []
    results = {}
    if contexts:
        length = max(contexts) + args.window
        song = synthetic_song(task, length, args.bar_tokens, args.seed)
        _, _, rates = run_cached(model, song, contexts, args.window)
        print("| context (tokens) | cached tokens/s | full-recompute tokens/s | speed-up |")
        print("|---|---|---|---|")
    for c in contexts:
        full = run_full(model, song, c, args.full_steps)
        results[c] = (rates[c], full)
        print(f"| {c} | {rates[c]:.1f} | {full:.4f} ({1 / full:.0f} s per token) | {rates[c] / full:.0f}x |", flush=True)
    if len(contexts) > 1:
        lo, hi = contexts[0], contexts[-1]
        print(f"# cached tokens/s at {hi} / at {lo}: {results[hi][0] / results[lo][0]:.2f}")
    if args.goals:
        goals(model, task, args)
    if args.headline:
        song = synthetic_song(task, args.headline, args.bar_tokens, args.seed + 1)
        bars = int(song.eq(task.bar_token).sum())
        for name in args.dtypes.split(","):
            m = model.to(DTYPES[name])
            total, cpu, _, state = run_cached(m, song, [], args.window, keep_state=True)
            mib = cache_bytes(m.decoder, state) / 2**20
            old = old_cache_bytes(m, song.numel(), bars, 1400) / 2**20
            print(f"# headline {name}: {args.headline} tokens ({bars} bars) in {total:.1f} s wall = "
                  f"{total / 60:.2f} min ({args.headline / total:.1f} tokens/s); process CPU time {cpu:.1f} s; "
                  f"cache {mib:.1f} MiB (previous implementation: {old:.0f} MiB, ratio {mib / old:.3f})", flush=True)
        model.to(torch.float32)


if __name__ == "__main__":
    main()
