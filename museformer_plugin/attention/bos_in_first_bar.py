"""The original's training / validation layout (``--bos-in-first-bar``), on top of any FC-Attention backend.

The original Museformer computes two functions (spec §2.6). In its generation path the BOS is outside every bar,
as everywhere in this project. In its training and ``fairseq-validate`` data path the chunk points start at 0, so
the BOS is *also* the first token of bar 1. Compared with this project's layout that changes exactly three things:

1. the BOS's bar embedding uses bar id 1 instead of 0 (the decoder's input embedding, not this module);
2. the BOS row attends to every token of bar 1, future ones included (bar 1's own-bar block is not causal for
   the prefix row: the causal triangle starts after the prefix) — the leak behind the published perplexities;
3. the summary of bar 1 attends to the BOS too (it is one of bar 1's tokens).

Every other row and summary sees the same keys in both layouts (every token already sees the BOS as the prefix).
So the backends compute this project's layout and ``FineCoarseAttention`` replaces the BOS row and bar 1's summary
of the samples laid out the original's way by the two small attentions below (one query each, over at most
bar 1's tokens): a plain masked softmax, the same for every backend, and differentiable, so training in that
layout works too.
"""
from __future__ import annotations

import torch

from ..bar_layout import BarLayout
from .dense import masked_attention


def _bos_and_first_bar(layout: BarLayout) -> torch.Tensor:
    """Bool (B, T): the BOS and every token of bar 1 (the original's bar 1 in its training layout)."""
    return layout.bar_ids.eq(0) | layout.bar_ids.eq(1)


def first_summary_with_bos(z, q_sum, k_sum, v_sum, k_reg, v_reg, layout: BarLayout, dropout_p=0.0, training=False):
    """Summaries ``z`` (B, H, S, D) with slot 0 (bar 1) of the flagged samples recomputed over [its own key | the
    BOS and bar 1's tokens]. q_sum/k_sum/v_sum (B, H, S, D), k_reg/v_reg (B, H, T, D)."""
    flags = layout.bos_in_first_bar
    if flags is None or z.size(2) == 0:
        return z
    B = z.size(0)
    keys = torch.cat([k_sum[:, :, :1], k_reg], dim=2)  # (B, H, 1 + T, D)
    values = torch.cat([v_sum[:, :, :1], v_reg], dim=2)
    mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=z.device), _bos_and_first_bar(layout)], dim=1)
    slot0 = masked_attention(q_sum[:, :, :1], keys, values, mask[:, None, :], dropout_p, training)  # (B, H, 1, D)
    # Only samples whose bar 1 is complete have a real slot 0 (the others keep the backend's padding slot).
    use = (flags & layout.num_complete_bars.gt(0))[:, None, None, None]  # (B, 1, 1, 1)
    return torch.cat([torch.where(use, slot0, z[:, :, :1]), z[:, :, 1:]], dim=2)


def bos_row_over_first_bar(attn, q_reg, k_reg, v_reg, layout: BarLayout, dropout_p=0.0, training=False):
    """Aggregation output ``attn`` (B, H, T, D) with the BOS row (position 0) of the flagged samples recomputed
    over the BOS and every token of bar 1. q_reg/k_reg/v_reg (B, H, T, D): the whole sequence (no KV cache)."""
    flags = layout.bos_in_first_bar
    if flags is None:
        return attn
    if q_reg.size(2) != k_reg.size(2):
        raise ValueError("the original's training layout (--bos-in-first-bar) is for full forward passes, not for "
                         "cached decoding (which uses the generation layout)")
    mask = _bos_and_first_bar(layout)[:, None, :]  # (B, 1, T)
    row0 = masked_attention(q_reg[:, :, :1], k_reg, v_reg, mask, dropout_p, training)  # (B, H, 1, D)
    use = flags[:, None, None, None]
    return torch.cat([torch.where(use, row0, attn[:, :, :1]), attn[:, :, 1:]], dim=2)
