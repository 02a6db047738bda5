"""Cached decoding: a few new queries attend over a list of keys they may all see (the decoding *window*).

The KV-cached decoder (``incremental.py``) keeps, per sample, exactly the keys a token of the current bar may see
(spec §2.2 step 5): [K2/V2 of its coarse bars | BOS | its fine bars | its own bar so far], and for a bar's summary
[its own key | the bar's tokens]. The causal part is implicit (the window holds only keys at or before the query),
so the only mask is each sample's window length. Same numerics as the other backends (``common.py``).

Two forms of the same maths: ``attend_window_reference`` (explicit scores, fp32 softmax; the half-precision path)
and, for an fp32 window, one fused ``scaled_dot_product_attention`` call (torch's CPU flash kernel reads the keys
and values once, 1.2-1.3x faster per decoding step on a 2-core CPU than the explicit form, see docs/benchmarks.md).
Tests compare the two on random windows.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .common import head_scale, scaled_scores


def _visible(k: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Bool (B, W): True where key w is among sample b's first ``lengths[b]`` keys."""
    return torch.arange(k.size(2), device=k.device)[None, :] < lengths[:, None]


def attend_window_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax((q/√D)·kᵀ)·v written out: scores and softmax in fp32, q cast to the window's dtype (see
    ``attend_window``)."""
    out_dtype = q.dtype
    q = q.to(k.dtype)
    scores = scaled_scores(q, k, head_scale(q))  # (B, H, Q, W) fp32
    if lengths is not None:
        scores = scores.masked_fill(~_visible(k, lengths)[:, None, None, :], float("-inf"))
    return torch.matmul(F.softmax(scores, dim=-1).to(v.dtype), v).to(out_dtype)


def attend_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: Optional[torch.Tensor] = None):
    """softmax((q/√D)·kᵀ)·v over the first ``lengths[b]`` keys of each sample (all W keys when None).

    q (B, H, Q, D), k/v (B, H, W, D), lengths long (B,) on q's device with 1 <= lengths <= W. Returns (B, H, Q, D)
    in q's dtype. The cache may be kept in another dtype than the weights (fp32 keys and values for bf16 weights
    on CPU, where bf16 batched matmuls of this shape are several times slower than fp32): q is cast to it. An fp32
    window runs as one fused SDPA call; a half-precision one (CUDA) keeps the explicit fp32-softmax form of
    ``common.py``.
    """
    if k.dtype != torch.float32:
        return attend_window_reference(q, k, v, lengths)
    mask = None if lengths is None else _visible(k, lengths)[:, None, None, :]
    out = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, scale=head_scale(q))
    return out.to(q.dtype)
