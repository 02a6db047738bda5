"""Bar-aligned block-sparse FC-Attention in plain PyTorch: same signatures and outputs as the dense reference.

Only the (query, key) pairs that can be attended are computed (plus a little padding), so the cost grows about
linearly with the length for the Museformer bar selection. No custom build: gathers and, per chunk of blocks,
torch's own fused CPU flash-attention op or a plain matmul + softmax, on CPU and GPU, in any float dtype (softmax
statistics in fp32).

Keys come from two streams, kept as the caller's tensors (nothing is concatenated or copied whole):
stream A = the summary tokens (K2/V2 in the aggregation, the summaries' own K/V in the summarisation) and
stream B = the regular tokens. One softmax runs over both: each part is attended on its own and the two results
are merged with their log-sum-exps (exact; the backward pass of each part uses the merged output and
log-sum-exp).

Aggregation (``attend_regular_sparse``), spec §2.2 step 5:
1. Query blocks follow the bars: every bar's queries (and, separately, every sample's padding queries) are cut
   into ``ceil(len / block_size)`` pieces of equal size. All queries of a block share ONE key list: the summaries
   of the bar's coarse bars (stream A), then the BOS, every token of its fine bars and its own bar up to the
   block's last query (stream B). Nothing is gathered that the block does not attend to, except the causal
   triangle of its own bar.
2. Each stream-B key carries a *visibility threshold*: ``ALWAYS`` (visible to every query of the block), its
   position (own-bar keys: visible to queries at or after it) or ``NEVER`` (list padding). The element mask of a
   block is ``threshold <= query position`` and is never stored. Stream-A keys are always visible.
3. Blocks are sorted (query count, then key count) and cut into chunks whose padding stays within
   ``CHUNK_WASTE`` of the pairs they hold; each chunk is gathered and attended in one batched call.

Summarisation (``attend_summaries_sparse``), spec §2.2 step 3: one block per summary slot, whose keys are its own
summary key (stream A) and every token of its bar (stream B).

The plans depend on the layout only: they are computed once per batch and shared by all layers (cached on the
``BarLayout``). The autograd function keeps its inputs (no copies), the output and the row log-sum-exp, and
recomputes each chunk in backward, as FlashAttention does: O(T) memory.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..bar_layout import PAD_BAR, BarLayout, BarScheme, bar_spans
from .common import head_scale, no_summaries, softmax_dtype

HAS_DROPOUT = True

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
# torch's fused CPU flash-attention op (and ``_backward``): returns the row log-sum-exp, takes an additive mask.
_FLASH = "_scaled_dot_product_flash_attention_for_cpu"


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

    def computed_pairs(self, per_pair: int = 8, budget: int = CHUNK_ELEMENTS) -> int:
        """(query, key) pairs a call computes, padding included (for benchmarks)."""
        return sum((b1 - b0) * q * (a + k) for b0, b1, q, a, k in self.chunks(per_pair, budget))


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
    b_sample, b_bar = blk_group // G, blk_group % G  # b_bar == nb + 1: padding queries
    b_last = q_pos.masked_fill(q_pos.ge(T), -1).amax(-1)  # last query position of each block

    # 2a. Stream A: the slots of the coarse bars of the block's bar (none for bar 0 / padding), real slots only.
    coarse_rows = torch.zeros(G, S, dtype=torch.bool, device=dev)
    coarse_rows[: nb + 1] = coarse[:, 1 : S + 1]  # slot j <-> bar j + 1
    slot_ok = torch.arange(S, device=dev)[None, :] < layout.num_complete_bars[b_sample, None]
    sum_sel = coarse_rows[b_bar] & slot_ok  # (NBLK, S)
    n_sum = sum_sel.sum(-1)
    amax = int(n_sum.max()) if nblk else 0
    slots = torch.argsort((~sum_sel).to(torch.uint8), dim=-1, stable=True)[:, :amax]  # selected slots first
    a_rows = torch.where(torch.arange(amax, device=dev)[None, :] < n_sum[:, None], b_sample[:, None] * S + slots,
                         torch.full_like(slots, -1))

    # 2b. Stream B: whole spans of the BOS bar and the fine bars, the own bar up to the block's last query.
    start, end = bar_spans(layout, nb)  # (B, nb + 1)
    start, end = start[b_sample], end[b_sample]  # (NBLK, nb + 1)
    own = (ar_bar[None, :] == b_bar[:, None]) & b_bar.le(nb)[:, None] & b_bar.gt(0)[:, None]
    fine_rows = torch.zeros(G, nb + 1, dtype=torch.bool, device=dev)
    fine_rows[: nb + 1] = fine
    whole = fine_rows[b_bar] | (ar_bar[None, :] == 0)  # (NBLK, nb + 1): seen in full by every query
    span_end = torch.where(own, torch.minimum(end, b_last[:, None] + 1), end)
    span_len = torch.where(whole | own, (span_end - start).clamp(min=0), torch.zeros_like(start))
    n_reg = span_len.sum(-1)
    bmax = int(n_reg.max()) if nblk else 0
    o = torch.arange(bmax, device=dev)[None, :].expand(nblk, -1)
    cum = torch.cumsum(span_len, -1)
    span = torch.searchsorted(cum, o.contiguous(), right=True).clamp(max=nb)  # which bar holds key o
    pos = torch.gather(start, 1, span) + o - (torch.gather(cum, 1, span) - torch.gather(span_len, 1, span))
    real = o < n_reg[:, None]
    b_rows = torch.where(real, b_sample[:, None] * T + pos, torch.full_like(pos, -1))
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


@functools.lru_cache(maxsize=None)
def _cpu_flash_ops_take_masks() -> bool:
    """Whether this torch has the CPU flash-attention op and its backward, with an ``attn_mask`` argument."""
    try:
        ops = (getattr(torch.ops.aten, _FLASH), getattr(torch.ops.aten, _FLASH + "_backward"))
        return all("attn_mask" in str(op.default._schema) for op in ops)
    except (AttributeError, RuntimeError):
        return False


def fused_kernel_available(q: torch.Tensor, dropout_p: float) -> bool:
    """torch's CPU flash-attention op (fused softmax, returns the log-sum-exp): CPU, no dropout."""
    return q.device.type == "cpu" and dropout_p == 0.0 and _cpu_flash_ops_take_masks()


class _Gatherer:
    """Gathers table rows into reusable buffers (one allocation per call instead of one per chunk)."""

    def __init__(self, like: torch.Tensor, rows: int):
        self.buf = like.new_empty(max(rows, 1), *like.shape[1:])
        self.used = 0

    def __call__(self, table, rows, n, length):
        """Rows of a flat (R, H, D) table -> (n, H, length, D), a view of (n, length, H, D) buffer rows."""
        H, D = table.shape[1:]
        k = n * length
        out = self.buf[self.used : self.used + k]
        torch.index_select(table, 0, rows.reshape(-1), out=out)
        self.used += k
        return out.view(n, length, H, D).transpose(1, 2)

    def reset(self):
        self.used = 0


def _gatherers(plan, chunks, q, k_a, k_b):
    """Buffers for one call: queries/outputs (3 per chunk in backward), stream A and stream B keys/values."""
    qrows = max(((b1 - b0) * qm for b0, b1, qm, _, _ in chunks), default=0)
    arows = max(((b1 - b0) * am for b0, b1, _, am, _ in chunks), default=0)
    brows = max(((b1 - b0) * bm for b0, b1, _, _, bm in chunks), default=0)
    return _Gatherer(q, 3 * qrows), _Gatherer(k_a, 2 * arows), _Gatherer(k_b, 2 * brows)


def _chunk_inputs(plan, gathers, chunk, q, k_a, v_a, k_b, v_b):
    """Gathered queries (n, H, qm, D), keys/values of both streams and the masks of one chunk (forward and
    backward read the same); the gather buffers start over for each chunk."""
    b0, b1, qm, am, bm = chunk
    n = b1 - b0
    gq, ga, gb = gathers
    for g in gathers:
        g.reset()
    a_rows, b_rows = plan.a_rows[b0:b1, :am], plan.b_rows[b0:b1, :bm]
    qc = gq(q, plan.q_src[b0:b1, :qm], n, qm)
    kv = (ga(k_a, a_rows, n, am), ga(v_a, a_rows, n, am), gb(k_b, b_rows, n, bm), gb(v_b, b_rows, n, bm))
    return qc, kv, _chunk_masks(plan, b0, b1, qm, am, bm, q.dtype)


def _scatter_add(acc, rows, x):
    """acc[rows] += x for x (n, H, length, D) laid out as a gather's output."""
    acc.index_add_(0, rows.reshape(-1), x.transpose(1, 2).reshape(-1, *acc.shape[1:]).to(acc.dtype))


def _chunk_masks(plan, b0, b1, qm, am, bm, dtype):
    """Additive masks (0 / -inf) of stream A (n, 1, 1, am) and stream B (n, 1, qm, bm), and whether each block has
    any stream-A key (n,) and any stream-B key (n,) (a part without keys is left out of the merged softmax)."""
    a_len = plan.a_len[b0:b1]
    a_vis = torch.arange(am, device=a_len.device)[None, :] < a_len[:, None]
    b_vis = plan.b_thr[b0:b1, None, None, :bm] <= plan.q_pos[b0:b1, None, :qm, None]
    has_b = plan.b_thr[b0:b1, 0] < NEVER if bm else torch.zeros_like(a_len, dtype=torch.bool)
    # Built on the device with no host scalar (a torch.tensor(-inf, device=cuda) per chunk syncs the stream).
    mask_a = torch.zeros(a_vis.shape, dtype=dtype, device=a_vis.device).masked_fill_(~a_vis, float("-inf"))
    mask_b = torch.zeros(b_vis.shape, dtype=dtype, device=b_vis.device).masked_fill_(~b_vis, float("-inf"))
    return mask_a[:, None, None, :], mask_b, a_len > 0, has_b


def _merge(out_a, lse_a, has_a, out_b, lse_b, has_b):
    """One softmax over two key sets from the two partial results: out (n, H, qm, D) and lse (n, H, qm)."""
    ninf = float("-inf")
    lse_a = lse_a.masked_fill(~has_a[:, None, None], ninf)  # an empty part returns lse 0: drop it
    lse_b = lse_b.masked_fill(~has_b[:, None, None], ninf)
    lse = torch.logaddexp(lse_a, lse_b)
    w_a, w_b = torch.exp(lse_a - lse), torch.exp(lse_b - lse)
    # Computed in the (n, qm, H, D) memory layout of the flash outputs, so that scattering rows needs no copy.
    out = (w_b.transpose(1, 2)[..., None] * softmax_dtype(out_b.transpose(1, 2))).to(out_b.dtype)
    out.addcmul_(w_a.transpose(1, 2)[..., None].to(out.dtype), out_a.transpose(1, 2))
    return out.transpose(1, 2), lse


def _explicit_probs(qc, kc, visible, scale, lse=None):
    """Masked fp32 scores -> probabilities; with ``lse`` given, rebuilt from it (backward), else also returned."""
    s = softmax_dtype(torch.matmul(qc * scale, kc.transpose(-1, -2)))  # (n, H, qm, km); q scaled first (fp16)
    s.masked_fill_(~visible, float("-inf"))
    if lse is not None:
        return s.sub_(lse[..., None]).exp_()
    m = s.amax(-1, keepdim=True)
    s.sub_(m).exp_()
    denom = s.sum(-1, keepdim=True)
    return s.div_(denom), (m + denom.log()).squeeze(-1)


def _keep_mask(p, dropout_p, seed):
    """Dropout keep mask scaled by 1 / (1 - p), reproducible from ``seed`` (forward and backward agree)."""
    g = torch.Generator(device=p.device)
    g.manual_seed(seed)
    keep = torch.rand(p.shape, generator=g, device=p.device, dtype=p.dtype) >= dropout_p
    return keep.to(p.dtype) / (1.0 - dropout_p)


def _fused_forward(qc, kc_a, vc_a, kc_b, vc_b, masks, scale):
    """Flash attention over each non-empty part, merged. Every block has at least one key in some part."""
    mask_a, mask_b, has_a, has_b = masks
    flash = getattr(torch.ops.aten, _FLASH)
    parts = [flash(qc, k, v, 0.0, False, attn_mask=m, scale=scale) + (has,)
             for k, v, m, has in ((kc_a, vc_a, mask_a, has_a), (kc_b, vc_b, mask_b, has_b)) if k.size(2)]
    if len(parts) == 1:
        return parts[0][:2]
    return _merge(*parts[0], *parts[1])


def _fused_backward(doc, qc, kc_a, vc_a, kc_b, vc_b, oc, lse, masks, scale):
    """Each part's gradients from the MERGED output and log-sum-exp: P = exp(S - lse) are the joint
    probabilities and rowsum(dO ∘ O) is the joint delta, so the two parts' dQ add up."""
    mask_a, mask_b, _, _ = masks
    flash_bwd = getattr(torch.ops.aten, _FLASH + "_backward")
    dq, grads = None, []
    for k, v, m in ((kc_a, vc_a, mask_a), (kc_b, vc_b, mask_b)):
        if k.size(2) == 0:
            grads += [None, None]
            continue
        dq_part, dk, dv = flash_bwd(doc, qc, k, v, oc, lse, 0.0, False, attn_mask=m, scale=scale)
        dq = dq_part if dq is None else dq + dq_part
        grads += [dk, dv]
    return (dq, *grads)


def _explicit_visible(masks, qm):
    mask_a, mask_b, _, _ = masks
    return torch.cat([mask_a.expand(-1, -1, qm, -1), mask_b], dim=-1) == 0  # (n, 1, qm, am + bm)


def _explicit_forward(qc, kc_a, vc_a, kc_b, vc_b, masks, scale, dropout_p, seed):
    kc, vc = torch.cat([kc_a, kc_b], dim=2), torch.cat([vc_a, vc_b], dim=2)
    p, lse = _explicit_probs(qc, kc, _explicit_visible(masks, qc.size(2)), scale)
    if dropout_p > 0:
        p.mul_(_keep_mask(p, dropout_p, seed))
    return torch.matmul(p.to(vc.dtype), vc), lse


def _explicit_backward(doc, qc, kc_a, vc_a, kc_b, vc_b, oc, lse, masks, scale, dropout_p, seed):
    am = kc_a.size(2)
    kc, vc = torch.cat([kc_a, kc_b], dim=2), torch.cat([vc_a, vc_b], dim=2)
    p = _explicit_probs(qc, kc, _explicit_visible(masks, qc.size(2)), scale, lse)  # (n, H, qm, km) fp32
    acc = p.dtype
    delta = (doc.to(acc) * oc.to(acc)).sum(-1, keepdim=True)  # rowsum(dP ∘ P) = rowsum(dO ∘ O)
    dp = softmax_dtype(torch.matmul(doc, vc.transpose(-1, -2)))
    if dropout_p > 0:
        keep = _keep_mask(p, dropout_p, seed)
        dv = torch.matmul((p * keep).transpose(-1, -2).to(vc.dtype), doc)
        dp.mul_(keep)
    else:
        dv = torch.matmul(p.transpose(-1, -2).to(vc.dtype), doc)
    ds = dp.sub_(delta).mul_(p).mul_(scale).to(qc.dtype)  # dS = P ∘ (dP - delta), times the scale
    dq = torch.matmul(ds, kc)
    dk = torch.matmul(ds.transpose(-1, -2), qc)
    return dq, dk[:, :, :am], dv[:, :, :am], dk[:, :, am:], dv[:, :, am:]


class _BarBlockAttention(torch.autograd.Function):
    """softmax(q·kᵀ·scale, masked)·v over each block's key list [stream A | stream B], chunk by chunk, with a
    recomputing backward.

    q (Rq, H, D); k_a/v_a (Ra, H, D) stream A; k_b/v_b (Rb, H, D) stream B (see ``BlockPlan``). Returns
    (Rq + 1, H, D); the last row is scratch. Saved for backward: the inputs (no copies), the output and the row
    log-sum-exp. ``fused`` selects torch's CPU flash-attention op (no dropout); otherwise an explicit matmul +
    fp32 softmax whose dropout masks are regenerated from ``seed`` in backward.
    """

    @staticmethod
    def forward(ctx, q, k_a, v_a, k_b, v_b, plan, chunks, scale, dropout_p, seed, fused):
        H, D = q.shape[1:]
        out = q.new_empty(q.size(0) + 1, H, D)  # every real row is written once; the last row is scratch
        gathers = _gatherers(plan, chunks, q, k_a, k_b)
        lses = []
        for c, chunk in enumerate(chunks):
            b0, b1, qm = chunk[:3]
            qc, kv, masks = _chunk_inputs(plan, gathers, chunk, q, k_a, v_a, k_b, v_b)
            if fused:
                oc, lse = _fused_forward(qc, *kv, masks, scale)
            else:
                oc, lse = _explicit_forward(qc, *kv, masks, scale, dropout_p, seed + c)
            lses.append(lse)  # (n, H, qm) fp32
            out.index_copy_(0, plan.q_dst[b0:b1, :qm].reshape(-1), oc.transpose(1, 2).reshape(-1, H, D))
        out[-1] = 0
        ctx.save_for_backward(q, k_a, v_a, k_b, v_b, out)
        ctx.plan, ctx.chunks, ctx.lses = plan, chunks, lses
        ctx.scale, ctx.dropout_p, ctx.seed, ctx.fused = scale, dropout_p, seed, fused
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k_a, v_a, k_b, v_b, out = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        H, D = q.shape[1:]
        acc = torch.promote_types(q.dtype, torch.float32)
        dq = torch.empty(out.shape, dtype=acc, device=q.device)  # each real row is written once; + scratch row
        dk_a, dv_a, dk_b, dv_b = (torch.zeros(t.shape, dtype=acc, device=q.device) for t in (k_a, v_a, k_b, v_b))
        gathers = _gatherers(plan, ctx.chunks, q, k_a, k_b)
        for c, chunk in enumerate(ctx.chunks):
            b0, b1, qm, am, bm = chunk
            n = b1 - b0
            qc, kv, masks = _chunk_inputs(plan, gathers, chunk, q, k_a, v_a, k_b, v_b)
            q_dst, a_rows, b_rows = plan.q_dst[b0:b1, :qm], plan.a_rows[b0:b1, :am], plan.b_rows[b0:b1, :bm]
            oc = gathers[0](out, q_dst, n, qm)
            doc = gathers[0](dout, q_dst, n, qm)
            doc.masked_fill_(plan.q_pos[b0:b1, None, :qm, None] == NEVER - 1, 0.0)  # padding queries: no gradient
            if ctx.fused:
                grads = _fused_backward(doc, qc, *kv, oc, ctx.lses[c], masks, scale)
            else:
                grads = _explicit_backward(doc, qc, *kv, oc, ctx.lses[c], masks, scale, ctx.dropout_p, ctx.seed + c)
            dqc, dkc_a, dvc_a, dkc_b, dvc_b = grads
            dq.index_copy_(0, q_dst.reshape(-1), dqc.transpose(1, 2).reshape(-1, H, D).to(acc))
            if am:
                _scatter_add(dk_a, a_rows, dkc_a)
                _scatter_add(dv_a, a_rows, dvc_a)
            if bm:
                _scatter_add(dk_b, b_rows, dkc_b)
                _scatter_add(dv_b, b_rows, dvc_b)
        return (dq[:-1].to(q.dtype), dk_a.to(k_a.dtype), dv_a.to(v_a.dtype), dk_b.to(k_b.dtype), dv_b.to(v_b.dtype),
                None, None, None, None, None, None)


def _rows(x):
    """(B, H, L, D) -> (B * L, H, D); free when x is a head view of a (B, L, H * D) projection."""
    B, H, L, D = x.shape
    return x.transpose(1, 2).reshape(B * L, H, D)


def _attend_blocks(q, k_a, v_a, k_b, v_b, plan, dropout_p, training, fused):
    """Run ``_BarBlockAttention`` for (B, H, L, D) inputs; returns (B * Lq, H, D)."""
    H = q.shape[1]
    p = dropout_p if training else 0.0
    if fused is None:
        fused = fused_kernel_available(q, p)
    elif fused and not fused_kernel_available(q, p):
        raise ValueError("the fused CPU attention kernel needs a CPU tensor, no dropout and torch >= 2.3")
    seed = int(torch.randint(0, 2**62, (1,))) if p > 0 else 0  # from the global RNG: torch.manual_seed applies
    cuda = q.device.type == "cuda"
    budget, waste = (CUDA_CHUNK_ELEMENTS, CUDA_CHUNK_WASTE) if cuda else (CHUNK_ELEMENTS, CHUNK_WASTE)
    chunks = plan.chunks(H * (1 if fused else 2), budget, waste)  # explicit: fp32 scores and probabilities
    out = _BarBlockAttention.apply(_rows(q), _rows(k_a), _rows(v_a), _rows(k_b), _rows(v_b), plan, chunks,
                                   head_scale(q), p, seed, fused)
    return out[:-1]


def attend_summaries(q_sum, k_sum, v_sum, k_reg, v_reg, layout: BarLayout, dropout_p=0.0, training=False,
                            block_size: int = 256, fused=None):
    """Summarisation (spec §2.2 step 3), block-sparse. Same contract as ``dense.attend_summaries``.

    q_sum/k_sum/v_sum (B, H, S, D), k_reg/v_reg (B, H, T, D). Returns z (B, H, S, D). ``block_size`` is unused
    (each summary is one block: its own key and exactly its bar); ``fused`` as in ``attend_regular_sparse``.
    """
    B, H, S, D = q_sum.shape
    if S == 0:
        return no_summaries(q_sum, k_sum, v_sum)
    plan = plan_summary_blocks(layout, S)
    z = _attend_blocks(q_sum, k_sum, v_sum, k_reg, v_reg, plan, dropout_p, training, fused)
    return z.view(B, S, H, D).transpose(1, 2)


def attend_regular(q_reg, k_reg, v_reg, k2_sum, v2_sum, layout: BarLayout, scheme: BarScheme,
                          dropout_p=0.0, training=False, block_size: int = 256, fused=None):
    """Aggregation (spec §2.2 step 5), block-sparse. Same contract as ``dense.attend_regular``.

    q_reg (B, H, Tq, D) = the last Tq positions of the layout, k_reg/v_reg (B, H, T, D), k2_sum/v2_sum (B, H, S, D).
    ``block_size``: the longest query block (a longer bar is cut into equal pieces). ``fused``: force (True) or
    forbid (False) torch's CPU flash-attention kernel; None = use it when it applies (CPU, no dropout).
    Returns (B, H, Tq, D).
    """
    B, H, Tq, D = q_reg.shape
    plan = plan_bar_blocks(layout, scheme, Tq, k2_sum.size(2), block_size)
    out = _attend_blocks(q_reg, k2_sum, v2_sum, k_reg, v_reg, plan, dropout_p, training, fused)
    return out.view(B, Tq, H, D).transpose(1, 2)  # (B, H, Tq, D)
