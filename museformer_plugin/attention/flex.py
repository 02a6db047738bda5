"""FC-Attention on torch's FlexAttention: the GPU backend (compiled on CUDA, eager on CPU for tests).

Two FlexAttention calls per layer, each with a ``BlockMask`` built from bar spans (never from a T×T mask):

* summarisation (spec §2.2 step 3): queries = the S summary slots, keys = [summary keys | regular keys];
  slot j sees its own key and every token of bar j + 1;
* aggregation (step 5): queries = the T regular positions, keys = [K2 summaries | regular keys]; a token sees the
  summaries of its coarse bars, the BOS, its fine bars and its own bar causally; padding sees only the BOS.

Both key axes are laid out as ``[summary region padded to Sp | token region padded to Tp]`` with Sp, Tp multiples
of ``BLOCK`` (128), so summaries and tokens never share a key block. The block lists are computed per
(query block, key block) from the bars each block spans: a pair is *listed* when some element may be visible and
*full* when every element is (then FlexAttention skips the element mask). Inside partial blocks the exact
element mask (``mask_mod``) reads small per-batch tables: the query and key bar ids, the key positions and the
fine / coarse bar-selection matrices. The masks depend only on the layout: they are built once per batch and
shared by every layer (cached on the ``BarLayout``, like the sparse plans).

The BlockMask holds (B, nQ, nK) int32 block indices, nQ = Tp/128, nK = (Sp + Tp)/128: 0.26 MB at 32k tokens,
against 1 GiB for a T×T boolean mask.

No attention dropout: FlexAttention cannot drop probabilities. ``backends.resolve_impl`` refuses an explicit
``flex`` that trains with attention dropout, and ``auto`` runs ``sparse`` then.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..bar_layout import PAD_BAR, BarLayout, BarScheme
from .backends import FLEX_HAS_NO_DROPOUT
from .common import head_scale, no_summaries

HAS_DROPOUT = False
BLOCK = 128  # FlexAttention's default sparse block (query and key), a multiple of its CUDA kernels' tiles

_compiled: Optional[Callable] = None


def flex_available() -> bool:
    """Whether this torch ships FlexAttention (torch >= 2.5)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex_fn(device_type: str) -> Callable:
    """flex_attention, compiled once per process on CUDA (dynamic shapes: new song lengths reuse the kernel after
    at most one recompile), eager elsewhere (CPU tests; eager materialises the scores, so keep sizes small)."""
    global _compiled
    if not flex_available():
        raise ValueError(f"--attention-impl flex needs torch >= 2.5 with FlexAttention; this is torch "
                         f"{torch.__version__}; use --attention-impl sparse")
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda":
        return flex_attention
    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=True)
    return _compiled


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _rect_counts(table: torch.Tensor, r0, r1, c0, c1) -> torch.Tensor:
    """Number of True entries of ``table`` (R, C) in rows r0..r1 and columns c0..c1 (inclusive, broadcast long
    tensors; an empty range counts 0), from its 2-D prefix sums."""
    R, C = table.shape
    P = F.pad(table.long().cumsum(0).cumsum(1), (1, 0, 1, 0))  # (R + 1, C + 1), P[i, j] = sum table[:i, :j]
    empty = (r0 > r1) | (c0 > c1)
    r0, c0 = r0.clamp(0, R), c0.clamp(0, C)
    r1, c1 = (r1 + 1).clamp(0, R), (c1 + 1).clamp(0, C)
    n = P[r1, c1] - P[r0, c1] - P[r1, c0] + P[r0, c0]
    return torch.where(empty, torch.zeros_like(n), n)


def _block_ranges(values: torch.Tensor, real: torch.Tensor, num_blocks: int):
    """Per block of ``BLOCK`` columns of values (B, N): min and max of the real entries (empty: min > max) and
    whether any entry is not real. Returns three tensors (B, num_blocks)."""
    B = values.size(0)
    v = values.view(B, num_blocks, BLOCK)
    r = real.view(B, num_blocks, BLOCK)
    big = torch.iinfo(values.dtype).max
    vmin = torch.where(r, v, torch.full_like(v, big)).amin(-1)
    vmax = torch.where(r, v, torch.full_like(v, -1)).amax(-1)
    return vmin, vmax, (~r).any(-1)


def _ordered(listed: torch.Tensor):
    """Block lists of a (B, nQ, nK) bool table → (num (B, 1, nQ), indices (B, 1, nQ, nK)) int32, as
    ``BlockMask.from_kv_blocks`` takes them (listed blocks first, ascending)."""
    num = listed.sum(-1, dtype=torch.int32)
    idx = torch.argsort(listed.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num[:, None].contiguous(), idx[:, None].contiguous()


@dataclass
class _Tables:
    """Per-batch tables over the padded axes: what the element masks read and the block ranges."""

    Sp: int
    Tp: int
    qbar: torch.Tensor  # (B, Tp) bar id of each query position (PAD_BAR beyond T)
    key_sum_bar: torch.Tensor  # (B, Sp + Tp) bar of a real summary key, else -1
    key_tok_bar: torch.Tensor  # (B, Sp + Tp) bar of a token key (PAD_BAR for padding), -2 in the summary region
    key_pos: torch.Tensor  # (Sp + Tp,) position of a token key (0 in the summary region)
    bmin: torch.Tensor  # (B, nT) smallest bar id of the real positions of each 128-token block (empty: > bmax)
    bmax: torch.Tensor  # (B, nT) largest
    bpad: torch.Tensor  # (B, nT) the block holds padding
    first: torch.Tensor  # (nT,) first position of each block
    last: torch.Tensor  # (B, nT) last real position of each block (-1: none)


def _tables(layout: BarLayout, S: int) -> _Tables:
    return layout.cached(("flex-tables", S), lambda: _build_tables(layout, S))


def _build_tables(layout: BarLayout, S: int) -> _Tables:
    bar_ids = layout.bar_ids
    dev = bar_ids.device
    B, T = bar_ids.shape
    Tp, Sp = _round_up(max(T, 1), BLOCK), _round_up(S, BLOCK)
    nT = Tp // BLOCK
    qbar = F.pad(bar_ids, (0, Tp - T), value=PAD_BAR)
    slot = torch.arange(Sp, device=dev)
    slot_bar = torch.where(slot[None, :] < layout.num_complete_bars[:, None], slot[None, :] + 1,
                           torch.full_like(slot, -1)[None])
    key_sum_bar = torch.cat([slot_bar, torch.full((B, Tp), -1, dtype=torch.long, device=dev)], 1)
    key_tok_bar = torch.cat([torch.full((B, Sp), -2, dtype=torch.long, device=dev), qbar], 1)
    key_pos = torch.cat([torch.zeros(Sp, dtype=torch.long, device=dev), torch.arange(Tp, device=dev)])
    real = qbar.ne(PAD_BAR)
    bmin, bmax, bpad = _block_ranges(qbar, real, nT)
    _, last, _ = _block_ranges(torch.arange(Tp, device=dev).expand(B, Tp), real, nT)
    first = torch.arange(nT, device=dev) * BLOCK
    return _Tables(Sp, Tp, qbar, key_sum_bar, key_tok_bar, key_pos, bmin, bmax, bpad, first, last)


def summary_block_mask(layout: BarLayout, S: int):
    """BlockMask (B, 1, Sp, Sp + Tp) of the summarisation; cached on ``layout``."""
    return layout.cached(("flex-summaries", S), lambda: _build_summary_mask(layout, S))


def regular_block_mask(layout: BarLayout, scheme: BarScheme, S: int):
    """BlockMask (B, 1, Tp, Sp + Tp) of the aggregation; cached on ``layout``, shared by every layer."""
    return layout.cached(("flex-regular", scheme, S), lambda: _build_regular_mask(layout, scheme, S))


def _build_summary_mask(layout: BarLayout, S: int):
    from torch.nn.attention.flex_attention import BlockMask

    tb = _tables(layout, S)
    dev = tb.qbar.device
    B = tb.qbar.size(0)
    nQs = tb.Sp // BLOCK
    ncomplete = layout.num_complete_bars
    key_tok_bar = tb.key_tok_bar

    def summary_mask(b, h, q_idx, kv_idx):
        own_key = kv_idx == q_idx
        own_bar = (key_tok_bar[b, kv_idx] == q_idx + 1) & (q_idx < ncomplete[b])
        return own_key | own_bar

    # Query block i = slots i·128 .. i·128 + 127: its own (diagonal) summary block, and the token blocks that hold
    # bars i·128 + 1 .. min(i·128 + 128, complete bars).
    i = torch.arange(nQs, device=dev)
    lo = (i * BLOCK + 1)[None, :, None]  # (1, nQs, 1)
    hi = torch.minimum((i * BLOCK + BLOCK)[None, :], ncomplete[:, None])[:, :, None]  # (B, nQs, 1)
    tok = (tb.bmin[:, None, :] <= hi) & (tb.bmax[:, None, :] >= lo) & (lo <= hi)  # (B, nQs, nT)
    diag = torch.eye(nQs, dtype=torch.bool, device=dev).expand(B, nQs, nQs)
    listed = torch.cat([diag, tok], -1)
    return BlockMask.from_kv_blocks(*_ordered(listed), BLOCK_SIZE=BLOCK, mask_mod=summary_mask,
                                    seq_lengths=(tb.Sp, tb.Sp + tb.Tp))


def _build_regular_mask(layout: BarLayout, scheme: BarScheme, S: int):
    from torch.nn.attention.flex_attention import BlockMask

    tb = _tables(layout, S)
    dev = tb.qbar.device
    nb = max(layout.num_bars, S)
    fine, coarse = scheme.matrices(nb, dev)  # (nb + 1, nb + 1) [query bar, key bar]
    ncomplete = layout.num_complete_bars
    qbar, key_sum_bar, key_tok_bar, key_pos = tb.qbar, tb.key_sum_bar, tb.key_tok_bar, tb.key_pos

    def regular_mask(b, h, q_idx, kv_idx):
        qb = qbar[b, q_idx]
        qbc = qb.clamp(min=0)  # padding queries read row 0 (nothing selected) and see only the BOS
        sb, kb = key_sum_bar[b, kv_idx], key_tok_bar[b, kv_idx]
        sum_ok = (sb > 0) & coarse[qbc, sb.clamp(min=0)]
        own = (kb == qb) & (key_pos[kv_idx] <= q_idx)
        tok_ok = (kb >= 0) & ((kb == 0) | fine[qbc, kb.clamp(min=0)] | own)
        return sum_ok | tok_ok

    # Query blocks are the token blocks (the same positions). Bars are contiguous runs of positions, so a block
    # spans the bar range [bmin, bmax] and every bar in it has a token in the block: a (query block, key block)
    # pair is fully visible exactly when every (query bar, key bar) pair of the two ranges is.
    qa, qb_ = tb.bmin[:, :, None], tb.bmax[:, :, None]  # (B, nQ, 1)
    ka, kb = tb.bmin[:, None, :], tb.bmax[:, None, :]  # (B, 1, nT)
    has_q = qa <= qb_
    n_fine = _rect_counts(fine, qa, qb_, ka, kb)  # (B, nQ, nT) fine (query bar, key bar) pairs
    bos_in = ka.eq(0)  # the key block holds the BOS, which every query (padding too) sees
    ov_lo, ov_hi = torch.maximum(qa, ka), torch.minimum(qb_, kb)  # bars held by both blocks
    own_any = (ov_lo <= ov_hi) & (tb.first[None, None, :] <= tb.last[:, :, None])
    tok_listed = bos_in | (has_q & ((n_fine > 0) | own_any))
    area = (qb_ - qa + 1).clamp(min=0) * (kb - ka + 1).clamp(min=0)
    n_bos = bos_in.long() * (qb_ - qa + 1).clamp(min=0)  # pairs (query bar, BOS bar 0); fine[:, 0] is False
    n_own = (ov_hi - ov_lo.clamp(min=1) + 1).clamp(min=0)  # pairs (x, x), x >= 1; fine's diagonal is False
    own_before = tb.last[:, None, :] <= tb.first[None, :, None]  # every key at or before every query
    n_visible = n_fine + n_bos + torch.where(own_before, n_own, torch.zeros_like(n_own))
    tok_full = has_q & ~tb.bpad[:, :, None] & ~tb.bpad[:, None, :] & (area > 0) & (n_visible == area)

    # Summary key block c = slots c·128 .. c·128 + 127 = bars c·128 + 1 ..; only slots of complete bars are real.
    c = torch.arange(tb.Sp // BLOCK, device=dev)
    sa = (c * BLOCK + 1)[None, None, :]  # (1, 1, nS)
    s_end = (c * BLOCK + BLOCK)[None, None, :]
    sb = torch.minimum(s_end, ncomplete[:, None, None])  # (B, 1, nS) last real bar of the block
    n_coarse = _rect_counts(coarse, qa, qb_, sa, sb)  # (B, nQ, nS)
    sum_listed = has_q & (n_coarse > 0)
    sum_full = (sum_listed & ~tb.bpad[:, :, None] & (s_end <= ncomplete[:, None, None])
                & (n_coarse == (qb_ - qa + 1) * BLOCK))

    listed = torch.cat([sum_listed, tok_listed], -1)  # (B, nQ, nS + nT)
    full = torch.cat([sum_full, tok_full], -1)
    return BlockMask.from_kv_blocks(*_ordered(listed & ~full), *_ordered(full), BLOCK_SIZE=BLOCK,
                                    mask_mod=regular_mask, seq_lengths=(tb.Tp, tb.Sp + tb.Tp))


def _pad_len(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, H, L, D) zero-padded to L = n along dim 2."""
    return F.pad(x, (0, 0, 0, n - x.size(2))) if n > x.size(2) else x


def _attend(q, k_sum, v_sum, k_reg, v_reg, block_mask, tables: _Tables, q_axis: str):
    """One FlexAttention call over keys [summaries padded to Sp | tokens padded to Tp]; q (B, H, L, D) is padded to
    ``q_axis`` ("Sp" or "Tp") and the result cut back to L rows."""
    Sp, Tp = tables.Sp, tables.Tp
    keys = torch.cat([_pad_len(k_sum, Sp), _pad_len(k_reg, Tp)], dim=2)  # (B, H, Sp + Tp, D)
    values = torch.cat([_pad_len(v_sum, Sp), _pad_len(v_reg, Tp)], dim=2)
    out = _flex_fn(q.device.type)(_pad_len(q, getattr(tables, q_axis)), keys, values, block_mask=block_mask,
                                  scale=head_scale(q))
    return out[:, :, : q.size(2)]


def _check(dropout_p: float, training: bool):
    if training and dropout_p > 0:
        raise ValueError(FLEX_HAS_NO_DROPOUT)


def attend_summaries(q_sum, k_sum, v_sum, k_reg, v_reg, layout: BarLayout, dropout_p=0.0, training=False, **_):
    """Summarisation (spec §2.2 step 3) on FlexAttention. Same contract as ``dense.attend_summaries``.

    q_sum/k_sum/v_sum (B, H, S, D), k_reg/v_reg (B, H, T, D). Returns z (B, H, S, D).
    """
    _check(dropout_p, training)
    S = q_sum.size(2)
    if S == 0:
        return no_summaries(q_sum, k_sum, v_sum)
    return _attend(q_sum, k_sum, v_sum, k_reg, v_reg, summary_block_mask(layout, S), _tables(layout, S), "Sp")


def attend_regular(q_reg, k_reg, v_reg, k2_sum, v2_sum, layout: BarLayout, scheme: BarScheme, dropout_p=0.0,
                   training=False, **_):
    """Aggregation (spec §2.2 step 5) on FlexAttention. Same contract as ``dense.attend_regular``, except that
    the queries must be every position (Tq = T: training and evaluation; cached decoding uses ``window``).

    q_reg/k_reg/v_reg (B, H, T, D), k2_sum/v2_sum (B, H, S, D). Returns (B, H, T, D).
    """
    _check(dropout_p, training)
    Tq, T, S = q_reg.size(2), k_reg.size(2), k2_sum.size(2)
    if Tq != T:
        raise ValueError(f"the flex backend attends every position (got {Tq} queries for {T} keys); the cached "
                         "decoder uses the window backend")
    block_mask = regular_block_mask(layout, scheme, S)
    return _attend(q_reg, k2_sum, v2_sum, k_reg, v_reg, block_mask, _tables(layout, S), "Tp")
