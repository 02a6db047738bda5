"""Longest song one training step fits in a memory budget: museformer_lm vs fairseq's transformer_lm (same size).

Not a test. Both models are built the way ``fairseq-train`` builds them (``options.parse_args_and_arch`` →
``task.build_model``): ``--arch museformer_lm`` (the paper's size) with ``--task museformer_lm``, and
``--arch transformer_lm`` with 4 layers, 512 hidden, 8 heads, FFN 2048, GELU, pre-LN, sinusoidal positions, with
``--task language_modeling``, both on the same REMIGEN2 dictionary. One training step = forward over one song of L
tokens (a synthetic REMIGEN2 song with ~``--bar-tokens``-token bars, see bench_sampling.py), fairseq's
cross-entropy (log-softmax + NLL, summed), backward, one Adam step.

Memory: each (model, L) runs in a fresh child process whose glibc mmap threshold is 64 KiB (bench_attention's
``exact_rss``), so the resident set follows the live memory; the figure is VmHWM minus the resident set before the
model was built, i.e. parameters + gradients + Adam state + activations + temporaries of the step.

``--checkpoint-activations`` passes that option to both models.

The longest L is found by fitting peak(L) = a + b·L + c·L² (least squares) to the measured points of each model
and solving peak(L) = budget (at least 3 lengths per model); ``--verify`` then runs museformer_lm once at 97 % of
its predicted limit. A single length (``--models museformer_lm --museformer-lengths 122000``) just measures it.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_longest.py --budget-gib 20 --verify
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench_attention import exact_rss, rss_kib, run_in_child  # noqa: E402
from bench_sampling import synthetic_song  # noqa: E402

USER_DIR = str(HERE.parent / "museformer_plugin")

MODELS = ("museformer_lm", "transformer_lm")
SAME_SIZE = ["--decoder-layers", "4", "--decoder-embed-dim", "512", "--decoder-ffn-embed-dim", "2048",
             "--decoder-attention-heads", "8"]


def build(arch: str, data: str, length: int, args):
    """The model, built through fairseq's own argument parsing, as fairseq-train builds it, for songs of
    ``length`` tokens (transformer_lm's sinusoidal table is sized to its max positions: no larger than needed)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    common = [data, "--user-dir", USER_DIR, "--cpu", "--seed", "1",
              "--dropout", str(args.dropout), "--attention-dropout", str(args.attention_dropout)]
    if args.checkpoint_activations:
        common.append("--checkpoint-activations")
    if arch == "museformer_lm":
        argv = common + ["--task", "museformer_lm", "--arch", "museformer_lm", "--tokens-per-sample", str(length + 8)]
    else:
        argv = common + ["--task", "language_modeling", "--arch", "transformer_lm", *SAME_SIZE,
                         "--activation-fn", "gelu", "--decoder-normalize-before",
                         "--tokens-per-sample", str(length + 8), "--max-target-positions", str(length + 8)]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model)


def museformer_task(data: str):
    from museformer_plugin.task import MuseformerLMConfig, MuseformerLMTask

    return MuseformerLMTask.setup_task(MuseformerLMConfig(data=data, dataset_impl=None))


def worker(conn, arch, length, data, args):
    try:
        exact_rss()
        torch.set_num_threads(args.threads)
        task = museformer_task(data)
        song = synthetic_song(task, length, args.bar_tokens, seed=0)  # [BOS] + L tokens
        src, target = song[None, :-1].clone(), song[None, 1:].clone()  # (1, L)
        base = rss_kib("VmRSS")
        torch.manual_seed(0)
        model = build(arch, data, length, args).train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        t0 = time.perf_counter()
        logits = model(src)[0]  # (1, L, V)
        lprobs = F.log_softmax(logits.float(), dim=-1)
        loss = F.nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), reduction="sum")
        loss.backward()
        opt.step()
        seconds = time.perf_counter() - t0
        conn.send(dict(peak_mib=(rss_kib("VmHWM") - base) / 1024, seconds=seconds, params=params,
                       loss=float(loss.detach()) / length))
    except Exception as err:  # report, don't hang the parent
        conn.send(dict(error=f"{type(err).__name__}: {err}"))


def run(arch, length, data, args):
    return run_in_child(worker, (arch, length, data, args), args.timeout)


def fit_limit(points, budget_mib):
    """Least-squares peak(L) = a + b·L + c·L² over [(L, MiB)]; the L where it reaches the budget, and (a, b, c)."""
    L = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    A = np.stack([np.ones_like(L), L, L**2], axis=1)
    a, b, c = np.linalg.lstsq(A, y, rcond=None)[0]
    if abs(c) < 1e-12:
        limit = (budget_mib - a) / b
    else:
        disc = b * b - 4 * c * (a - budget_mib)
        limit = (-b + math.sqrt(disc)) / (2 * c) if disc >= 0 else math.nan
    return limit, (a, b, c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-gib", type=float, default=20.0, help="memory budget of one training step")
    ap.add_argument("--models", default=",".join(MODELS), help="which of %s to measure" % (MODELS,))
    ap.add_argument("--museformer-lengths", default="4096,8192,16384,32768", help="song lengths to measure")
    ap.add_argument("--transformer-lengths", default="2048,4096,8192,12288,16384", help="song lengths to measure")
    ap.add_argument("--bar-tokens", type=int, default=134, help="mean tokens per bar of the synthetic song")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--attention-dropout", type=float, default=0.0,
                    help="both models (0.0: transformer_lm's default, and its fused attention kernel applies)")
    ap.add_argument("--checkpoint-activations", action="store_true",
                    help="both models recompute each layer in backward (fairseq's option, and ours)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verify", action="store_true", help="run museformer_lm at 97%% of its predicted limit")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--json", default="", help="also write the raw results to this file")
    args = ap.parse_args()

    from data_prep.config import TokenizerConfig
    from data_prep.vocab import write_dict

    data = tempfile.mkdtemp(prefix="bench_longest_")
    write_dict(os.path.join(data, "dict.txt"), TokenizerConfig(instruments="lmd6", ignore_ts=True))
    budget = args.budget_gib * 1024
    lengths = {"museformer_lm": [int(x) for x in args.museformer_lengths.split(",")],
               "transformer_lm": [int(x) for x in args.transformer_lengths.split(",")]}
    results, limits = {}, {}
    for arch in args.models.split(","):
        points = []
        for L in lengths[arch]:
            res = run(arch, L, data, args)
            results[f"{arch}:{L}"] = res
            if "error" in res:
                print(f"{arch:15s} L={L:7d}  {res['error']}", flush=True)
                continue
            points.append((L, res["peak_mib"]))
            print(f"{arch:15s} L={L:7d}  peak {res['peak_mib']:9.0f} MiB  step {res['seconds']:7.1f} s  "
                  f"({res['params']:,} parameters)", flush=True)
        if len(points) < 3:
            continue
        limit, coef = fit_limit(points, budget)
        limits[arch] = limit
        print(f"{arch}: peak(L) ≈ {coef[0]:.0f} MiB + {coef[1] * 1024:.1f} KiB·L + {coef[2] * 2**20:.2f} B·L²  "
              f"→ {args.budget_gib:g} GiB at L ≈ {limit:,.0f}", flush=True)
    ratio = math.nan
    if len(limits) == 2:
        ratio = limits["museformer_lm"] / limits["transformer_lm"]
        print(f"\nlongest L in {args.budget_gib:g} GiB: museformer_lm {limits['museformer_lm']:,.0f}, "
              f"transformer_lm {limits['transformer_lm']:,.0f}, ratio {ratio:.2f}x")
    if args.verify and "museformer_lm" in limits:
        L = int(0.97 * limits["museformer_lm"])
        res = run("museformer_lm", L, data, args)
        results[f"verify:museformer_lm:{L}"] = res
        if "error" in res:
            print(f"verify museformer_lm L={L}: {res['error']}")
        else:
            print(f"verify museformer_lm L={L:,}: peak {res['peak_mib'] / 1024:.2f} GiB "
                  f"(budget {args.budget_gib:g} GiB), step {res['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, limits=limits, ratio=ratio, args=vars(args)), f, indent=1)


if __name__ == "__main__":
    main()
