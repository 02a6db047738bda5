"""Dense FC-Attention: the obviously-correct reference backend (full boolean masks, plain masked softmax).

Builds the masks with :func:`bar_layout.dense_masks` (O(T²) memory) and runs one masked softmax per step; every
fast backend (``sparse``, ``flex``, the decoding ``window``) is tested against it.

Queries shorter than the keys: ``q_reg`` may hold only the LAST ``Tq <= T`` positions of the layout (incremental
decoding with a KV cache: ``k_reg``/``v_reg`` hold all T positions, ``q_reg`` the new ones).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..bar_layout import BarLayout, BarScheme, dense_masks
from .common import head_scale, scaled_scores

HAS_DROPOUT = True


def masked_attention(q, k, v, mask, dropout_p: float, training: bool):
    """softmax((q/√D)·kᵀ masked) · v with the softmax in fp32.

    q (B, H, Q, D), k/v (B, H, K, D), mask bool (B, Q, K) shared by all heads, True = may attend. Every row must
    have at least one visible key (the layout guarantees it: the BOS or the summary itself).
    """
    scores = scaled_scores(q, k, head_scale(q))  # (B, H, Q, K) fp32
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if training and dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs.to(v.dtype), v)  # (B, H, Q, D)


def attend_summaries(q_sum, k_sum, v_sum, k_reg, v_reg, layout: BarLayout, dropout_p=0.0, training=False, **_):
    """Summarisation (spec §2.2 step 3).

    q_sum/k_sum/v_sum (B, H, S, D), k_reg/v_reg (B, H, T, D), S = layout.num_summary_slots.
    Summary slot j (bar j + 1) sees its own key and every token of its bar (bidirectional, no BOS); a slot without
    a complete bar (batch padding) sees only itself. Returns z (B, H, S, D).
    """
    _, sum_mask = dense_masks(layout, BarScheme(None, None))  # (B, S, S + T); the scheme does not enter it
    keys = torch.cat([k_sum, k_reg], dim=2)
    values = torch.cat([v_sum, v_reg], dim=2)
    return masked_attention(q_sum, keys, values, sum_mask, dropout_p, training)


def attend_regular(q_reg, k_reg, v_reg, k2_sum, v2_sum, layout: BarLayout, scheme: BarScheme, dropout_p=0.0,
                   training=False, **_):
    """Aggregation (spec §2.2 step 5).

    q_reg (B, H, Tq, D) = the last Tq positions (Tq = T in training), k_reg/v_reg (B, H, T, D),
    k2_sum/v2_sum (B, H, S, D). One joint softmax over [coarse summaries | BOS + fine bars + own bar causally].
    Padding rows see only the BOS. Returns (B, H, Tq, D).
    """
    reg_mask, _ = dense_masks(layout, scheme)  # (B, T, S + T)
    tq = q_reg.size(2)
    reg_mask = reg_mask[:, reg_mask.size(1) - tq :]
    keys = torch.cat([k2_sum, k_reg], dim=2)
    values = torch.cat([v2_sum, v_reg], dim=2)
    return masked_attention(q_reg, keys, values, reg_mask, dropout_p, training)

