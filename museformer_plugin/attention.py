"""FC-Attention: the fine- and coarse-grained attention module of one Museformer layer, and its dense reference.

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

Residual connections, pre-LN and output dropout belong to the caller (the decoder layer).

The two attention functions below (``attend_summaries_dense`` / ``attend_regular_dense``) are the obviously-correct
reference: they build the full boolean masks with :func:`bar_layout.dense_masks` (O(T²) memory) and run a plain
masked softmax. ``attention_sparse.py`` has the block-sparse functions with the same signature and outputs.

Queries shorter than the keys: ``q_reg`` may hold only the LAST ``Tq <= T`` positions of the layout (incremental
decoding with a KV cache: ``k_reg``/``v_reg`` hold all T positions, ``q_reg`` the new ones).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .bar_layout import BarLayout, BarScheme, dense_masks

IMPLS = ("dense", "sparse", "flex")


def softmax_dtype(scores: torch.Tensor) -> torch.Tensor:
    """Scores in the dtype the softmax runs in: fp32 for fp16/bf16 inputs (as the original's kernel), else as is."""
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def _masked_attention(q, k, v, mask, dropout_p: float, training: bool):
    """softmax(q·kᵀ/√D masked) · v with the softmax in fp32.

    q (B, H, Q, D), k/v (B, H, K, D), mask bool (B, Q, K) shared by all heads, True = may attend. Every row must
    have at least one visible key (the layout guarantees it: the BOS or the summary itself).
    """
    scale = 1.0 / math.sqrt(q.size(-1))
    scores = softmax_dtype(torch.matmul(q, k.transpose(-1, -2))) * scale  # (B, H, Q, K)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if training and dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs.to(v.dtype), v)  # (B, H, Q, D)


def attend_summaries_dense(q_sum, k_sum, v_sum, k_reg, v_reg, layout: BarLayout, dropout_p=0.0, training=False):
    """Summarisation (spec §2.2 step 3), dense reference.

    q_sum/k_sum/v_sum (B, H, S, D), k_reg/v_reg (B, H, T, D), S = layout.num_summary_slots.
    Summary slot j (bar j + 1) sees its own key and every token of its bar (bidirectional, no BOS); a slot without
    a complete bar (batch padding) sees only itself. Returns z (B, H, S, D).
    """
    _, sum_mask = dense_masks(layout, BarScheme(None, None))  # (B, S, S + T); the scheme does not enter it
    keys = torch.cat([k_sum, k_reg], dim=2)
    values = torch.cat([v_sum, v_reg], dim=2)
    return _masked_attention(q_sum, keys, values, sum_mask, dropout_p, training)


def attend_regular_dense(
    q_reg, k_reg, v_reg, k2_sum, v2_sum, layout: BarLayout, scheme: BarScheme, dropout_p=0.0, training=False
):
    """Aggregation (spec §2.2 step 5), dense reference.

    q_reg (B, H, Tq, D) = the last Tq positions (Tq = T in training), k_reg/v_reg (B, H, T, D),
    k2_sum/v2_sum (B, H, S, D). One joint softmax over [coarse summaries | BOS + fine bars + own bar causally].
    Padding rows see only the BOS. Returns (B, H, Tq, D).
    """
    reg_mask, _ = dense_masks(layout, scheme)  # (B, T, S + T)
    tq = q_reg.size(2)
    reg_mask = reg_mask[:, reg_mask.size(1) - tq :]
    keys = torch.cat([k2_sum, k_reg], dim=2)
    values = torch.cat([v2_sum, v_reg], dim=2)
    return _masked_attention(q_reg, keys, values, reg_mask, dropout_p, training)


def get_attention_functions(impl: str):
    """(attend_summaries, attend_regular) for ``impl`` in {"dense", "sparse", "flex"}."""
    if impl == "dense":
        return attend_summaries_dense, attend_regular_dense
    if impl == "sparse":
        from .attention_sparse import attend_regular_sparse, attend_summaries_sparse

        return attend_summaries_sparse, attend_regular_sparse
    if impl == "flex":
        raise ValueError("attention impl 'flex' is not implemented yet; use --attention-impl sparse (CPU and GPU)")
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")


class FineCoarseAttention(nn.Module):
    """One FC-Attention block (spec §2.2 steps 2-6), shared by the regular and the summary stream.

    Parameters shared by both streams: Wq, Wk, Wv (no bias), Wo (with bias). Separate: the q/k/v bias vectors of
    each stream, and Wk2/Wv2 (summary keys/values for the aggregation step, no bias).
    """

    def __init__(self, embed_dim: int, num_heads: int, attention_dropout: float = 0.0, impl: str = "sparse",
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
        self.impl = impl
        self._attend_sum, self._attend_reg = get_attention_functions(impl)

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

    def _qkv(self, x, bias):
        """q, k, v (B, H, L, D) of one stream from ONE matmul with the stream's biases: no separate bias pass, and
        the backward pass sums the three input gradients inside that matmul."""
        B, L, _ = x.shape
        qkv = F.linear(x, self.qkv_weight(), bias.reshape(-1)).view(B, L, 3, self.num_heads, self.head_dim)
        return tuple(t.transpose(1, 2) for t in qkv.unbind(2))  # each (B, H, L, D), a view of qkv

    def forward(self, x_reg: torch.Tensor, x_sum: torch.Tensor, layout: BarLayout, scheme: BarScheme):
        """x_reg (B, T, C) and x_sum (B, S, C), already layer-normed; S = layout.num_summary_slots.

        Masks (True = may attend) come from ``layout`` (bar ids (B, T), 0 = BOS, -1 = padding) and ``scheme``.
        Returns (out_reg (B, T, C), out_sum (B, S, C)) = (Wo·attn_reg + bo, Wo·Z + bo); no residual, no dropout.
        """
        B, T, C = x_reg.shape
        S = x_sum.size(1)
        assert C == self.embed_dim, f"x_reg has {C} channels, expected embed_dim {self.embed_dim}"
        assert tuple(layout.bar_ids.shape) == (B, T), (
            f"layout.bar_ids is {tuple(layout.bar_ids.shape)}, expected {(B, T)} to match x_reg")
        assert S == layout.num_summary_slots, (
            f"x_sum has {S} summary slots, layout has {layout.num_summary_slots} (max complete bars)")
        q_reg, k_reg, v_reg = self._qkv(x_reg, self.reg_qkv_bias)  # (B, H, T, D) each
        q_sum, k_sum, v_sum = self._qkv(x_sum, self.sum_qkv_bias)  # (B, H, S, D) each
        kw = dict(dropout_p=self.attention_dropout, training=self.training)
        if self.impl == "sparse":
            kw["block_size"] = self.block_size

        z = self._attend_sum(q_sum, k_sum, v_sum, k_reg, v_reg, layout, **kw)  # (B, H, S, D)
        z = z.transpose(1, 2).reshape(B, S, C)  # heads concatenated
        k2 = self._heads(self.k2_proj(z))  # (B, H, S, D)
        v2 = self._heads(self.v2_proj(z))
        attn = self._attend_reg(q_reg, k_reg, v_reg, k2, v2, layout, scheme, **kw)  # (B, H, T, D)
        attn = attn.transpose(1, 2).reshape(B, T, C)
        return self.out_proj(attn), self.out_proj(z)
