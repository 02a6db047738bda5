"""The GPU check's shared pieces: sizes (GPU and CPU dry run), budgets, part outcomes, log lines."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Tuple

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


class PartFailed(Exception):
    """A part that ran but did not pass, with the results it has."""

    def __init__(self, result: dict, message: str):
        super().__init__(message)
        self.result = result
