"""The device and precision flags every tool shares: ``--device auto|cpu|cuda`` and ``--dtype fp32|bf16|fp16``.

museformer-sample and museformer-eval-ppl used to differ (``--device cpu|cuda`` defaulting to cpu vs ``--cpu`` with
the GPU by default; ``--dtype`` vs ``--fp16``/``--bf16``). Both now take these two flags, ``auto`` by default (the
GPU when torch sees one); eval-ppl keeps its old flags as aliases for one release.
"""
from __future__ import annotations

import argparse

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


def add_device_arguments(group, dtype_help: str) -> None:
    """``--device`` and ``--dtype`` on an argparse parser or group; ``dtype_help`` says what precision does there."""
    group.add_argument("--device", choices=DEVICES, default="auto",
                       help="where to run the model: auto = cuda when torch sees a GPU, else cpu (default: auto)")
    group.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help=f"{dtype_help} (default: fp32)")


def add_old_alias(group, flag: str, dest: str, value: str) -> None:
    """An old boolean flag kept for one release as an alias: ``flag`` sets ``dest`` to ``value``."""
    group.add_argument(flag, dest=dest, action="store_const", const=value, default=argparse.SUPPRESS,
                       help=f"old name of --{dest} {value}, kept for one release")


def resolve_device(name: str) -> str:
    """"cpu" or "cuda" for a ``--device`` value; ValueError (one line) for cuda without a CUDA device."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch sees no CUDA device; use --device cpu or auto")
    return name
