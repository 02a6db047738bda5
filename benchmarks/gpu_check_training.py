"""Part (c) of the GPU check: fairseq-train of the paper-size museformer_lm and of transformer_lm, side by side."""
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
from pathlib import Path
from typing import List

import torch

from gpu_check_common import REPO, STATS_PREFIX, WRAPPER_FLAG, PartFailed, PartSkipped, Sizes, fmt, say


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
