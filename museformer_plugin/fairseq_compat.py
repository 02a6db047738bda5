"""Half-precision training through fairseq-train off TPUs: two fairseq-fixed 0.12.3.1 traps, fixed on the arguments.

1. ``options.parse_args_and_arch`` turns ``--bf16`` (and ``--memory-efficient-bf16``) into ``--tpu``: bf16 was a
   TPU-only mode in fairseq. ``Trainer`` then asks torch_xla for a device and fails with
   ``AttributeError: 'NoneType' object has no attribute 'xla_device'`` on every GPU or CPU machine.
   When torch_xla is not installed, ``tpu`` is set back to False, so bf16 trains on CUDA or CPU like fp16
   (the model cast to bf16, fp32 master weights in FP16Optimizer, no loss scaling needed).
2. FP16Optimizer keeps its fp32 master copy flattened per CUDA device (``torch.cuda.current_device()``), which
   fails on CPU; on CPU the per-parameter copy (``--fp16-no-flatten-grads``) is used instead.

fairseq-train parses its arguments, imports the ``--user-dir`` while doing so, then converts them to its config
with ``fairseq_cli.train.convert_namespace_to_omegaconf``; the plugin wraps that function (the only hook between
parsing and training) when it is imported from fairseq-train, and each change is logged.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from types import ModuleType
from typing import List, Sequence

import torch

logger = logging.getLogger(__name__)

_CLI_MODULES = ("fairseq_cli.train",)


def fix_half_precision_args(args) -> None:
    """Apply the two fixes to an argparse Namespace from fairseq's parser (in place)."""
    bf16 = getattr(args, "bf16", False) or getattr(args, "memory_efficient_bf16", False)
    if bf16 and getattr(args, "tpu", False) and importlib.util.find_spec("torch_xla") is None:
        args.tpu = False
        logger.info("--bf16 without torch_xla: training in bf16 on %s, not on a TPU (fairseq ties bf16 to --tpu)",
                    "cpu" if getattr(args, "cpu", False) or not torch.cuda.is_available() else "cuda")
    half = getattr(args, "fp16", False) or bf16
    on_cpu = getattr(args, "cpu", False) or not torch.cuda.is_available()
    memory_efficient = getattr(args, "memory_efficient_fp16", False) or getattr(args, "memory_efficient_bf16", False)
    if half and on_cpu and not memory_efficient and not getattr(args, "fp16_no_flatten_grads", False):
        args.fp16_no_flatten_grads = True
        logger.info("half precision on CPU: fp32 master weights kept per parameter (--fp16-no-flatten-grads)")


def running_cli_modules(names: Sequence[str]) -> List[ModuleType]:
    """The fairseq CLI modules among ``names`` that this process runs or has imported (``fairseq-train`` imports
    ``fairseq_cli.train``; ``python -m fairseq_cli.train`` runs it as ``__main__``, found by its spec name)."""
    found = []
    for mod in list(sys.modules.values()):
        spec = getattr(mod, "__spec__", None)
        if spec is not None and spec.name in names and mod not in found:
            found.append(mod)
    return found


def install() -> None:
    """Wrap ``convert_namespace_to_omegaconf`` of a running fairseq-train (``fairseq_cli.train`` or ``-m``)."""
    for mod in running_cli_modules(_CLI_MODULES):
        convert = getattr(mod, "convert_namespace_to_omegaconf", None)
        if convert is None or getattr(convert, "_museformer_wrapped", False):
            continue

        def wrapped(args, _convert=convert):
            if not hasattr(args, "_content"):  # an argparse Namespace, not an already converted config
                fix_half_precision_args(args)
            return _convert(args)

        wrapped._museformer_wrapped = True
        mod.convert_namespace_to_omegaconf = wrapped
