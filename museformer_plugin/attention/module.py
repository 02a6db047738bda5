"""FC-Attention: the fine- and coarse-grained attention module of one Museformer layer.

Spec §2.2 steps 2-6. A layer has two streams: the regular stream (BOS + music tokens, (B, T, C)) and the summary
stream (one summary token per complete bar, (B, S, C)). One call does

1. projections: Wq/Wk/Wv shared by both streams (no bias in the Linear layers), a separate q/k/v bias vector per
   stream (``add_different_kqv_bias_for_sum_and_reg``);
2. summarisation: each summary query attends over [its own key | all tokens of its bar] -> Z (heads concatenated,
   before any output projection);
3. K2 = Z·Wk2, V2 = Z·Wv2 (no bias, as released);
4. aggregation: each regular query attends, in ONE softmax, over the BOS, the tokens of its fine-grained bars, its
   own bar causally, and the K2/V2 summaries of its coarse-grained bars;
5. Wo (+ bo), shared by both streams: out_reg = Wo·attn + bo, out_sum = Wo·Z + bo.

Residual connections, pre-LN and output dropout belong to the caller (the decoder layer). Steps 2 and 4 run in the
backend chosen by ``impl`` (``backends.py``); the pieces of steps 1, 3 and 5 are methods (``project``,
``summary_kv``, ``out_proj``) that the cached decoder calls too, so the maths is written once.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..bar_layout import BarLayout, BarScheme
from .backends import IMPLS, get_backend, resolve_impl
from .bos_in_first_bar import bos_row_over_first_bar, first_summary_with_bos


class FineCoarseAttention(nn.Module):
    """One FC-Attention block (spec §2.2 steps 2-6), shared by the regular and the summary stream.

    Parameters shared by both streams: Wq, Wk, Wv (no bias), Wo (with bias). Separate: the q/k/v bias vectors of
    each stream, and Wk2/Wv2 (summary keys/values for the aggregation step, no bias).
    """

    def __init__(self, embed_dim: int, num_heads: int, attention_dropout: float = 0.0, impl: str = "auto",
                 block_size: int = 256):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1 (tokens per query block), got {block_size}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.attention_dropout = attention_dropout
        self.block_size = block_size
        if impl not in IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose one of {', '.join(IMPLS)}")
        self.impl = impl

        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        # Separate q/k/v biases for the two streams (the original's add_different_kqv_bias_for_sum_and_reg=True).
        self.reg_qkv_bias = nn.Parameter(torch.zeros(3, embed_dim))
        self.sum_qkv_bias = nn.Parameter(torch.zeros(3, embed_dim))
        # Summary keys/values for the aggregation step; no bias, as released (spec §2.2 step 4).
        self.k2_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v2_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        self.reset_parameters()

    def reset_parameters(self):
        """Spec §4.1: Xavier-uniform with gain 1/√2 for Wq/Wk/Wv/Wk2/Wv2, Xavier-uniform Wo, zero biases."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.k2_proj, self.v2_proj):
            nn.init.xavier_uniform_(lin.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        nn.init.zeros_(self.reg_qkv_bias)
        nn.init.zeros_(self.sum_qkv_bias)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, impl={self.impl}, "
                f"block_size={self.block_size}, attention_dropout={self.attention_dropout}")

    def _heads(self, x):
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)

    def qkv_weight(self) -> torch.Tensor:
        """Wq ‖ Wk ‖ Wv (3C x C): one matmul gives q, k and v; with ``*_qkv_bias.reshape(-1)`` as its bias."""
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])

    def project(self, x: torch.Tensor, stream: str, qkv_weight: Optional[torch.Tensor] = None):
        """q, k, v (B, H, L, D) of one stream (``"reg"`` or ``"sum"``) of x (B, L, C), from ONE matmul with the
        stream's biases (the backward pass sums the three input gradients inside it). ``qkv_weight``: a
        precomputed ``qkv_weight()`` (the cached decoder keeps one per layer instead of concatenating per step)."""
        B, L, _ = x.shape
        bias = (self.reg_qkv_bias if stream == "reg" else self.sum_qkv_bias).reshape(-1)
        weight = self.qkv_weight() if qkv_weight is None else qkv_weight
        qkv = F.linear(x, weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        return tuple(t.transpose(1, 2) for t in qkv.unbind(2))  # each (B, H, L, D), a view of qkv

    def summary_kv(self, z: torch.Tensor):
        """K2 = Z·Wk2 and V2 = Z·Wv2 (spec §2.2 step 4), z (B, S, C) heads concatenated → each (B, H, S, D)."""
        return self._heads(self.k2_proj(z)), self._heads(self.v2_proj(z))

    def backend_for(self, x: torch.Tensor):
        """The backend module that runs this call (``auto`` resolved for x's device and the dropout state)."""
        dropout_active = self.training and self.attention_dropout > 0
        return get_backend(resolve_impl(self.impl, x.device.type, dropout_active))

    def forward(self, x_reg: torch.Tensor, x_sum: torch.Tensor, layout: BarLayout, scheme: BarScheme,
                kv_sink: Optional[List] = None):
        """x_reg (B, T, C) and x_sum (B, S, C), already layer-normed; S = layout.num_summary_slots.

        Masks (True = may attend) come from ``layout`` (bar ids (B, T), 0 = BOS, -1 = padding) and ``scheme``;
        samples flagged in ``layout.bos_in_first_bar`` get the original's training layout (``bos_in_first_bar.py``).
        ``kv_sink``: a list that receives (k_reg, v_reg, k2, v2) of this layer (each (B, H, L, D)): the cached
        decoder's prompt prefill fills its cache from them.
        Returns (out_reg (B, T, C), out_sum (B, S, C)) = (Wo·attn_reg + bo, Wo·Z + bo); no residual, no dropout.
        """
        B, T, C = x_reg.shape
        S = x_sum.size(1)
        assert C == self.embed_dim, f"x_reg has {C} channels, expected embed_dim {self.embed_dim}"
        assert tuple(layout.bar_ids.shape) == (B, T), (
            f"layout.bar_ids is {tuple(layout.bar_ids.shape)}, expected {(B, T)} to match x_reg")
        assert S == layout.num_summary_slots, (
            f"x_sum has {S} summary slots, layout has {layout.num_summary_slots} (max complete bars)")
        assert x_sum.dtype == x_reg.dtype, f"x_sum is {x_sum.dtype} but x_reg is {x_reg.dtype}"
        backend = self.backend_for(x_reg)
        weight = self.qkv_weight()
        q_reg, k_reg, v_reg = self.project(x_reg, "reg", weight)  # (B, H, T, D) each
        q_sum, k_sum, v_sum = self.project(x_sum, "sum", weight)  # (B, H, S, D) each
        kw = dict(dropout_p=self.attention_dropout, training=self.training, block_size=self.block_size)

        z = backend.attend_summaries(q_sum, k_sum, v_sum, k_reg, v_reg, layout, **kw)  # (B, H, S, D)
        z = first_summary_with_bos(z, q_sum, k_sum, v_sum, k_reg, v_reg, layout, kw["dropout_p"], self.training)
        z = z.transpose(1, 2).reshape(B, S, C)  # heads concatenated
        k2, v2 = self.summary_kv(z)  # (B, H, S, D) each
        attn = backend.attend_regular(q_reg, k_reg, v_reg, k2, v2, layout, scheme, **kw)  # (B, H, T, D)
        attn = bos_row_over_first_bar(attn, q_reg, k_reg, v_reg, layout, kw["dropout_p"], self.training)
        attn = attn.transpose(1, 2).reshape(B, T, C)
        if kv_sink is not None:
            kv_sink.append((k_reg, v_reg, k2, v2))
        return self.out_proj(attn), self.out_proj(z)
