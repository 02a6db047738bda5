"""Numerics shared by every FC-Attention backend: where half precision is widened and how scores are scaled.

Half precision (fp16 / bf16) rules, the same in all backends (dense reference, block-sparse, flex, decoding window):
- q is multiplied by 1/√D BEFORE q·kᵀ, so fp16 scores stay in range (|q·k| can exceed fp16's 65,504 for long,
  large-norm heads; scaling afterwards would overflow first);
- the scores, the softmax and the log-sum-exp run in fp32 (``softmax_dtype``); the probabilities are cast back to
  the values' dtype for the P·V product.
"""
from __future__ import annotations

import math

import torch


def softmax_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype the softmax runs in: fp32 for fp16/bf16 inputs, else as is (fp32, fp64 stay)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def head_scale(q: torch.Tensor) -> float:
    """The softmax scale 1/√D of queries ``q`` (..., D)."""
    return 1.0 / math.sqrt(q.size(-1))


def scaled_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(q·scale)·kᵀ in softmax precision: q (..., Q, D), k (..., K, D) → fp32 (or fp64) scores (..., Q, K)."""
    return softmax_dtype(torch.matmul(q * scale, k.transpose(-1, -2)))


def no_summaries(q_sum: torch.Tensor, k_sum: torch.Tensor, v_sum: torch.Tensor) -> torch.Tensor:
    """z (B, H, 0, D) of a batch without a complete bar (S = 0), kept attached to the inputs for autograd: what
    every backend's ``attend_summaries`` returns then."""
    return q_sum * 0 + k_sum * 0 + v_sum * 0
