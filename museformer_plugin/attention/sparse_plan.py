"""Block plans of the block-sparse FC-Attention (``sparse.py``): which queries form a block and which keys it lists.

Keys come from two streams, kept as the caller's tensors: stream A = the summary tokens (K2/V2 in the
aggregation, the summaries' own K/V in the summarisation) and stream B = the regular tokens.

Aggregation (``plan_bar_blocks``), spec §2.2 step 5:
1. Query blocks follow the bars: every bar's queries (and, separately, every sample's padding queries) are cut
   into ``ceil(len / block_size)`` pieces of equal size. All queries of a block share ONE key list: the summaries
   of the bar's coarse bars (stream A), then the BOS, every token of its fine bars and its own bar up to the
   block's last query (stream B). Nothing is listed that the block does not attend to, except the causal
   triangle of its own bar.
2. Each stream-B key carries a *visibility threshold*: ``ALWAYS`` (visible to every query of the block), its
   position (own-bar keys: visible to queries at or after it) or ``NEVER`` (list padding). The element mask of a
   block is ``threshold <= query position`` and is never stored. Stream-A keys are always visible.
3. Blocks are sorted (query count, then key count) and cut into chunks (``BlockPlan.chunks``) whose padding
   stays within ``CHUNK_WASTE`` of the pairs they hold; the kernel gathers and attends each chunk in one call.

Summarisation (``plan_summary_blocks``), spec §2.2 step 3: one block per summary slot, whose keys are its own
summary key (stream A) and every token of its bar (stream B).

The plans depend on the layout only: they are computed once per batch and shared by all layers
(``BarLayout.cached``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..bar_layout import PAD_BAR, BarLayout, BarScheme, bar_spans

NEVER = 2**62  # visibility threshold of list padding: no query position reaches it
ALWAYS = -1  # visibility threshold of keys every query of the block may see

# Score elements (heads x queries x keys) of one chunk: bounds the temporary memory of the gathered keys/values,
# the mask and (explicit kernel) the fp32 scores. CPU: ~16 MiB of fp32 scores per chunk (cache-sized work, the
# cost per pair is what counts). CUDA: ~256 MiB, so that a 15k-token song needs tens of chunks per call instead of
# thousands: on a GPU each chunk is a handful of kernel launches and launch overhead dominates small chunks.
CHUNK_ELEMENTS = 1 << 22
CUDA_CHUNK_ELEMENTS = 1 << 26
# Padding a chunk may add, as a fraction of the (query, key) pairs its blocks really hold: small on CPU (padding
# costs its full price), large on CUDA (fewer, bigger launches are cheaper than exact ones).
CHUNK_WASTE = 0.05
CUDA_CHUNK_WASTE = 1.0

@dataclass
class BlockPlan:
    """Query blocks and their key lists.

    Queries are rows of a flat ``(Rq, H, D)`` table (the caller's queries, not copied); the attention output has
    one more, scratch row ``Rq`` that padding queries write to. Stream-A keys are rows of a flat ``(Ra, H, D)``
    table, stream-B keys rows of a flat ``(Rb, H, D)`` table. Padding entries read row 0 and are masked.

    q_src  (NBLK, QMAX)  query rows; padding -> row 0 (read, never written)
    q_dst  (NBLK, QMAX)  output rows; padding -> the scratch row Rq
    q_pos  (NBLK, QMAX)  query positions; padding -> NEVER - 1 (sees every listed key)
    a_rows (NBLK, AMAX)  stream-A key rows (always visible); a_len (NBLK,) how many are real
    b_rows (NBLK, BMAX)  stream-B key rows; b_thr (NBLK, BMAX) their visibility thresholds (NEVER = padding)
    q_len, a_lens, b_lens: the real counts as lists of ints

    Blocks are sorted by query count (in steps of 8), then by decreasing key count, so that runs of neighbours
    need little padding.
    """

    q_src: torch.Tensor
    q_dst: torch.Tensor
    q_pos: torch.Tensor
    a_rows: torch.Tensor
    a_len: torch.Tensor
    b_rows: torch.Tensor
    b_thr: torch.Tensor
    q_len: List[int]
    a_lens: List[int]
    b_lens: List[int]

    def chunks(self, per_pair: int, budget: int, waste: Optional[float] = None) -> List[Tuple[int, int, int, int, int]]:
        """Runs ``(b0, b1, qmax, amax, bmax)`` of consecutive blocks, each padded to its own longest lists.

        A run grows while its padded size stays within ``1 + waste`` times the pairs it really holds and within
        ``budget`` elements (``per_pair`` elements per (query, key) pair); a single block may exceed the budget.
        """
        waste = CHUNK_WASTE if waste is None else waste
        out = []
        b0, qm, am, bm, exact = 0, 0, 0, 0, 0
        for b, (q, a, k) in enumerate(zip(self.q_len, self.a_lens, self.b_lens)):
            q2, a2, b2 = max(qm, q), max(am, a), max(bm, k)
            padded = (b + 1 - b0) * q2 * (a2 + b2)
            if b > b0 and (padded > (1 + waste) * (exact + q * (a + k)) or padded * per_pair > budget):
                out.append((b0, b, qm, am, bm))
                b0, q2, a2, b2, exact = b, q, a, k, 0
            qm, am, bm, exact = q2, a2, b2, exact + q * (a + k)
        if self.q_len:
            out.append((b0, len(self.q_len), qm, am, bm))
        return out


def _make_plan(q_rows, q_pos, a_rows, b_rows, b_thr, num_query_rows):
    """Padding (row -1) -> read / write targets; blocks sorted by query count // 8, then key count (decreasing)."""
    q_len = q_rows.ge(0).sum(-1)
    a_len, b_len = a_rows.ge(0).sum(-1), b_rows.ge(0).sum(-1)
    k_len = a_len + b_len
    key = (q_len // 8) * (int(k_len.max()) + 1 if k_len.numel() else 1) + k_len
    perm = torch.argsort(key, descending=True, stable=True)
    return BlockPlan(
        q_src=q_rows.clamp(min=0)[perm].contiguous(), q_dst=q_rows.masked_fill(q_rows.lt(0), num_query_rows)[perm],
        q_pos=q_pos[perm].contiguous(), a_rows=a_rows.clamp(min=0)[perm].contiguous(), a_len=a_len[perm],
        b_rows=b_rows.clamp(min=0)[perm].contiguous(), b_thr=b_thr[perm].contiguous(),
        q_len=q_len[perm].tolist(), a_lens=a_len[perm].tolist(), b_lens=b_len[perm].tolist())


def plan_bar_blocks(layout: BarLayout, scheme: BarScheme, num_queries: int, num_slots: int,
                    block_size: int) -> BlockPlan:
    """The query blocks and key lists of one aggregation call (see the module docstring).

    Queries are the last ``num_queries`` positions of the layout (rows ``b * Tq + i``); stream A = summary slots
    (rows ``b * S + j``), stream B = positions (rows ``b * T + t``). Cached on ``layout``: every layer of a
    forward pass asks for the same plan.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1 (tokens per query block), got {block_size}")
    key = ("aggregation", scheme, num_queries, num_slots, block_size)
    return layout.cached(key, lambda: _plan_bar_blocks(layout, scheme, num_queries, num_slots, block_size))


def _plan_bar_blocks(layout, scheme, num_queries, num_slots, block_size):
    bar_ids = layout.bar_ids
    dev = bar_ids.device
    B, T = bar_ids.shape
    S, Tq = num_slots, num_queries
    q0 = T - Tq  # position of the first query
    nb = max(layout.num_bars, S)
    G = nb + 2  # query groups per sample: bars 0..nb, and nb + 1 = the padding queries
    fine, coarse = scheme.matrices(nb, dev)  # (nb + 1, nb + 1) [query bar, key bar]
    ar_bar = torch.arange(nb + 1, device=dev)

    # 1. Query groups -> equal pieces of at most block_size queries (the blocks).
    qbar = bar_ids[:, q0:]
    group = torch.where(qbar.eq(PAD_BAR), torch.full_like(qbar, nb + 1), qbar)
    gid = (group + torch.arange(B, device=dev)[:, None] * G).reshape(-1)  # (B * Tq,) flat group id
    order = torch.argsort(gid, stable=True)  # query rows grouped, positions ascending inside a group
    gsize = torch.bincount(gid, minlength=B * G)  # (B * G,)
    npieces = (gsize + block_size - 1) // block_size
    psize = (gsize + npieces.clamp(min=1) - 1) // npieces.clamp(min=1)  # equal pieces, each <= block_size
    g_sorted = gid[order]
    rank = torch.arange(B * Tq, device=dev) - (torch.cumsum(gsize, 0) - gsize)[g_sorted]
    piece, offset = rank // psize[g_sorted], rank % psize[g_sorted]
    blk = (torch.cumsum(npieces, 0) - npieces)[g_sorted] + piece  # block of each sorted query
    nblk = int(npieces.sum())
    qmax = int(psize.max()) if nblk else 0
    q_rows = torch.full((nblk, qmax), -1, dtype=torch.long, device=dev)
    q_rows[blk, offset] = order
    q_pos = torch.full((nblk, qmax), NEVER - 1, dtype=torch.long, device=dev)
    q_pos[blk, offset] = q0 + order % Tq
    blk_group = torch.repeat_interleave(torch.arange(B * G, device=dev), npieces)
    blk_sample, blk_bar = blk_group // G, blk_group % G  # blk_bar == nb + 1: padding queries
    blk_last = q_pos.masked_fill(q_pos.ge(T), -1).amax(-1)  # last query position of each block

    # 2a. Stream A: the slots of the coarse bars of the block's bar (none for bar 0 / padding), real slots only.
    coarse_rows = torch.zeros(G, S, dtype=torch.bool, device=dev)
    coarse_rows[: nb + 1] = coarse[:, 1 : S + 1]  # slot j <-> bar j + 1
    slot_ok = torch.arange(S, device=dev)[None, :] < layout.num_complete_bars[blk_sample, None]
    sum_sel = coarse_rows[blk_bar] & slot_ok  # (NBLK, S)
    n_sum = sum_sel.sum(-1)
    amax = int(n_sum.max()) if nblk else 0
    slots = torch.argsort((~sum_sel).to(torch.uint8), dim=-1, stable=True)[:, :amax]  # selected slots first
    a_rows = torch.where(torch.arange(amax, device=dev)[None, :] < n_sum[:, None], blk_sample[:, None] * S + slots,
                         torch.full_like(slots, -1))

    # 2b. Stream B: whole spans of the BOS bar and the fine bars, the own bar up to the block's last query.
    start, end = bar_spans(layout, nb)  # (B, nb + 1)
    start, end = start[blk_sample], end[blk_sample]  # (NBLK, nb + 1)
    own = (ar_bar[None, :] == blk_bar[:, None]) & blk_bar.le(nb)[:, None] & blk_bar.gt(0)[:, None]
    fine_rows = torch.zeros(G, nb + 1, dtype=torch.bool, device=dev)
    fine_rows[: nb + 1] = fine
    whole = fine_rows[blk_bar] | (ar_bar[None, :] == 0)  # (NBLK, nb + 1): seen in full by every query
    span_end = torch.where(own, torch.minimum(end, blk_last[:, None] + 1), end)
    span_len = torch.where(whole | own, (span_end - start).clamp(min=0), torch.zeros_like(start))
    n_reg = span_len.sum(-1)
    bmax = int(n_reg.max()) if nblk else 0
    o = torch.arange(bmax, device=dev)[None, :].expand(nblk, -1)
    cum = torch.cumsum(span_len, -1)
    span = torch.searchsorted(cum, o.contiguous(), right=True).clamp(max=nb)  # which bar holds key o
    pos = torch.gather(start, 1, span) + o - (torch.gather(cum, 1, span) - torch.gather(span_len, 1, span))
    real = o < n_reg[:, None]
    b_rows = torch.where(real, blk_sample[:, None] * T + pos, torch.full_like(pos, -1))
    b_thr = torch.where(torch.gather(own, 1, span), pos, torch.full_like(pos, ALWAYS))
    b_thr = torch.where(real, b_thr, torch.full_like(b_thr, NEVER))
    return _make_plan(q_rows, q_pos, a_rows, b_rows, b_thr, B * Tq)


def plan_summary_blocks(layout: BarLayout, num_slots: int) -> BlockPlan:
    """The summarisation as blocks: one block per summary slot (query row ``b * S + j``), whose keys are its own
    summary key (stream A, row ``b * S + j``) and every token of its bar (stream B, rows ``b * T + t``); a slot
    without a complete bar (batch padding) sees only itself. Cached on ``layout``."""
    return layout.cached(("summarisation", num_slots), lambda: _plan_summary_blocks(layout, num_slots))


def _plan_summary_blocks(layout, num_slots):
    bar_ids = layout.bar_ids
    dev = bar_ids.device
    B, T = bar_ids.shape
    S = num_slots
    start, end = bar_spans(layout, max(layout.num_bars, S))
    start, end = start[:, 1 : S + 1].reshape(-1), end[:, 1 : S + 1].reshape(-1)  # (B * S,): slot j -> bar j + 1
    n_tok = (end - start) * layout.summary_valid(S).reshape(-1).long()
    bmax = int(n_tok.max()) if n_tok.numel() else 0
    slot = torch.arange(B * S, device=dev)
    o = torch.arange(bmax, device=dev)[None, :]
    real = o < n_tok[:, None]
    b_rows = torch.where(real, (slot // S)[:, None] * T + start[:, None] + o, torch.full_like(o, -1))
    b_thr = torch.where(real, ALWAYS, NEVER)
    q_pos = torch.zeros(B * S, 1, dtype=torch.long, device=dev)  # every key is visible
    return _make_plan(slot[:, None], q_pos, slot[:, None], b_rows, b_thr, B * S)
