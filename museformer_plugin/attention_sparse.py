"""Block-sparse FC-Attention in plain PyTorch: same signatures and outputs as the dense reference in attention.py.

Only the (query, key) pairs that can be attended are computed (plus block padding), so the cost grows about
linearly with the length for the Museformer bar selection. Everything is gather + batched matmul + one softmax,
so autograd gives the backward pass on CPU and GPU, with no custom build, in any float dtype (softmax in fp32).

Aggregation (``attend_regular_sparse``):
1. The keys of one sample form a *key table* of blocks of ``block_size`` rows: [summary blocks (K2/V2, S slots
   padded) | regular blocks (K/V, T positions padded)].
2. The queries are cut into blocks of ``block_size`` (fewer when there are fewer queries). For each query block we
   decide which key blocks hold at least one visible key, from bar ranges alone: a query block spanning bars
   [qlo, qhi] needs a regular key block spanning bars [klo, khi] when the bar-level visibility (fine | own | BOS)
   has a True inside that rectangle (2-D prefix sums), and the key block does not start after the query block's
   last position; it needs a summary block when the coarse matrix has a True for one of its valid slots.
   Every key block appears at most once per query block (deduplicated across the bars inside it).
3. The needed blocks are gathered (padded to the largest count in the batch), scores are one batched matmul,
   the exact element mask is rebuilt from bar ids and positions, and ONE softmax runs over [summaries | regular].

Summarisation (``attend_summaries_sparse``): each summary slot gathers the tokens of its bar (padded to the longest
bar) and attends over [its own key | those tokens].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import softmax_dtype
from .bar_layout import PAD_BAR, BarLayout, BarScheme, bar_spans


def attend_summaries_sparse(q_sum, k_sum, v_sum, k_reg, v_reg, layout: BarLayout, dropout_p=0.0, training=False,
                            block_size: int = 64):
    """Summarisation (spec §2.2 step 3), gather-based. Same contract as ``attention.attend_summaries_dense``.

    q_sum/k_sum/v_sum (B, H, S, D), k_reg/v_reg (B, H, T, D). Returns z (B, H, S, D). ``block_size`` is unused
    (each summary gathers exactly its bar); it is accepted so both functions take the same keywords.
    """
    B, H, S, D = q_sum.shape
    T = k_reg.size(2)
    if S == 0:  # no complete bar in the batch; keep the (empty) result attached to the inputs for autograd
        return q_sum * 0 + k_sum * 0 + v_sum * 0
    start, end = bar_spans(layout, max(layout.num_bars, S))
    start, end = start[:, 1 : S + 1], end[:, 1 : S + 1]  # (B, S): slot j -> bar j + 1
    length = (end - start) * layout.summary_valid(S).long()  # invalid slots gather nothing
    lmax = max(int(length.max()), 1)
    offs = torch.arange(lmax, device=start.device)
    key_ok = offs[None, None, :] < length[:, :, None]  # (B, S, Lmax)
    pos = torch.where(key_ok, start[:, :, None] + offs, torch.zeros_like(key_ok, dtype=torch.long))
    flat = (pos + torch.arange(B, device=pos.device)[:, None, None] * T).view(-1)  # rows of (B * T)

    scale = 1.0 / math.sqrt(D)
    q = q_sum.transpose(0, 1) * scale  # (H, B, S, D)
    kt = k_reg.transpose(0, 1).reshape(H, B * T, D)
    vt = v_reg.transpose(0, 1).reshape(H, B * T, D)
    kg = kt.index_select(1, flat).view(H, B, S, lmax, D)
    vg = vt.index_select(1, flat).view(H, B, S, lmax, D)

    own = softmax_dtype((q * k_sum.transpose(0, 1)).sum(-1, keepdim=True))  # (H, B, S, 1): the summary's own key
    bar = softmax_dtype(torch.matmul(q.unsqueeze(3), kg.transpose(-1, -2)).squeeze(3))  # (H, B, S, Lmax)
    bar = bar.masked_fill(~key_ok, float("-inf"))
    probs = torch.softmax(torch.cat([own, bar], dim=-1), dim=-1)
    if training and dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    probs = probs.to(v_reg.dtype)
    z = probs[..., :1] * v_sum.transpose(0, 1) + torch.matmul(probs[..., 1:].unsqueeze(3), vg).squeeze(3)
    return z.transpose(0, 1)  # (B, H, S, D)


def _rect_any(prefix, r0, r1, c0, c1):
    """Whether a bool matrix has a True in rows [r0, r1) x columns [c0, c1), from its 2-D prefix sums."""
    total = prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0]
    return total > 0


def _prefix_sums(m):
    p = torch.zeros(m.size(0) + 1, m.size(1) + 1, dtype=torch.long, device=m.device)
    p[1:, 1:] = m.long().cumsum(0).cumsum(1)
    return p


def _block_bar_range(bars, real):
    """Smallest and largest bar id among the ``real`` entries of each block; (lo, hi + 1), empty -> (0, 0)."""
    big = torch.iinfo(bars.dtype).max
    lo = torch.where(real, bars, torch.full_like(bars, big)).amin(-1)
    hi = torch.where(real, bars, torch.full_like(bars, -1)).amax(-1) + 1
    empty = ~real.any(-1)
    return lo.masked_fill(empty, 0), hi.masked_fill(empty, 0)


def plan_blocks(layout: BarLayout, scheme: BarScheme, num_queries: int, num_slots: int, block_size: int):
    """Which key blocks each query block needs, and the element mask over the gathered keys.

    Queries are the last ``num_queries`` positions of the layout. Returns a dict with
    ``idx`` long (B, NQ, Kmax) (key-block numbers in the per-sample table [summary blocks | regular blocks]),
    ``mask`` bool (B, NQ, QB, Kmax * KB) (True = may attend), and the block sizes QB (queries) and KB (keys).
    """
    bar_ids = layout.bar_ids
    dev = bar_ids.device
    B, T = bar_ids.shape
    S = num_slots
    nb = max(layout.num_bars, S)
    kb = block_size
    qb = max(1, min(block_size, num_queries))
    n_qblk = -(-num_queries // qb)
    n_sblk = -(-S // kb)
    n_rblk = -(-T // kb)
    q0 = T - num_queries  # position of the first query

    fine, coarse = scheme.matrices(nb, dev)  # (nb + 1, nb + 1) [query bar, key bar]
    ar = torch.arange(nb + 1, device=dev)
    # Bar-level visibility of regular keys: fine bars, the own bar (made causal per element below), the BOS.
    vis = fine | (ar[:, None] == ar[None, :]) | (ar[None, :] == 0)

    # Query blocks: bars of the real (non-padding) queries; padding queries only need the BOS, always included.
    qpos = q0 + torch.arange(n_qblk * qb, device=dev)  # (NQ * QB,)
    qbar = torch.full((B, n_qblk * qb), PAD_BAR, dtype=torch.long, device=dev)
    qbar[:, :num_queries] = bar_ids[:, q0:]
    qbar = qbar.view(B, n_qblk, qb)
    q_lo, q_hi = _block_bar_range(qbar, qbar.ne(PAD_BAR))  # (B, NQ)
    q_last = qpos.view(n_qblk, qb)[:, -1].clamp(max=T - 1)  # (NQ,) last query position of each block

    # Regular key blocks.
    kbar = torch.full((B, n_rblk * kb), PAD_BAR, dtype=torch.long, device=dev)
    kbar[:, :T] = bar_ids
    kbar_blk = kbar.view(B, n_rblk, kb)
    k_lo, k_hi = _block_bar_range(kbar_blk, kbar_blk.ne(PAD_BAR))  # (B, NR)
    pv = _prefix_sums(vis)
    need_reg = _rect_any(pv, q_lo[:, :, None], q_hi[:, :, None], k_lo[:, None, :], k_hi[:, None, :])
    k_first = torch.arange(n_rblk, device=dev) * kb
    need_reg &= k_first[None, None, :] <= q_last[None, :, None]  # causal at block level
    need_reg[:, :, 0] = True  # the BOS block: every query (padding included) sees the BOS

    # Summary key blocks: slot j holds bar j + 1's summary when that bar is complete.
    slot = torch.arange(n_sblk * kb, device=dev)
    slot_valid = slot[None, :] < layout.num_complete_bars[:, None].clamp(max=S)  # (B, NS * KB)
    if n_sblk:
        s_lo = torch.arange(n_sblk, device=dev) * kb + 1  # first bar of each summary block
        s_hi = torch.minimum(s_lo[None, :] + kb, layout.num_complete_bars[:, None].clamp(max=S) + 1)  # (B, NS)
        s_hi = torch.maximum(s_hi, s_lo[None, :])
        pc = _prefix_sums(coarse)
        need_sum = _rect_any(pc, q_lo[:, :, None], q_hi[:, :, None], s_lo[None, None, :], s_hi[:, None, :])
    else:
        need_sum = torch.zeros(B, n_qblk, 0, dtype=torch.bool, device=dev)
    need = torch.cat([need_sum, need_reg], dim=2)  # (B, NQ, NS + NR)

    count = need.sum(-1)  # (B, NQ)
    kmax = int(count.max())
    idx = torch.argsort((~need).to(torch.uint8), dim=-1, stable=True)[..., :kmax].contiguous()  # needed blocks first
    blk_ok = torch.arange(kmax, device=dev) < count[..., None]  # (B, NQ, Kmax)

    # Per-row key codes of the table: summary rows -> their bar id (coarse columns 0..nb), regular rows ->
    # nb + 2 + bar id (fine/BOS columns), padding / invalid -> nb + 1 (a column that is always False).
    none = nb + 1
    sum_code = torch.where(slot_valid, slot[None, :] + 1, torch.full_like(slot[None, :], none))
    reg_code = torch.where(kbar.ne(PAD_BAR), kbar + nb + 2, torch.full_like(kbar, none))
    code = torch.cat([sum_code, reg_code], dim=1).view(B, n_sblk + n_rblk, kb)
    kpos = torch.cat([torch.full((B, n_sblk * kb), T, dtype=torch.long, device=dev),
                      torch.arange(n_rblk * kb, device=dev).expand(B, -1)], dim=1).view(B, n_sblk + n_rblk, kb)
    gidx = idx.view(B, -1, 1).expand(-1, -1, kb)
    g_code = torch.gather(code, 1, gidx).view(B, n_qblk, kmax, kb)
    g_code = torch.where(blk_ok[..., None], g_code, torch.full_like(g_code, none)).view(B, n_qblk, 1, kmax * kb)
    g_pos = torch.gather(kpos, 1, gidx).view(B, n_qblk, 1, kmax * kb)

    # Lookup table [query bar, key code]: coarse summaries | (fine | BOS) regular keys; the spare column is False.
    lut = torch.zeros(nb + 1, 2 * (nb + 2), dtype=torch.bool, device=dev)
    lut[:, : nb + 1] = coarse
    lut[:, nb + 2 : 2 * nb + 3] = fine | (ar[None, :] == 0)
    qbar0 = qbar.clamp(min=0)  # padding queries behave like the BOS row: they see only the BOS
    rows = lut[qbar0]  # (B, NQ, QB, 2 * (nb + 2))
    mask = torch.gather(rows, 3, g_code.expand(-1, -1, qb, -1))  # (B, NQ, QB, Kmax * KB)
    own = (g_code == (qbar0 + nb + 2)[..., None]) & (g_pos <= qpos.view(1, n_qblk, qb, 1))
    mask |= own
    return dict(idx=idx, mask=mask, qb=qb, kb=kb, n_sblk=n_sblk, n_rblk=n_rblk, count=count.amax(0).tolist())


def _chunks(count, per_key_block):
    """Split the query blocks into runs [(c0, c1, kmax)]: each run is padded only to ITS largest key-block count
    (early blocks need few key blocks), and holds at most CHUNK_ELEMENTS score elements (per_key_block = scores
    per query block and gathered key block)."""
    out = []
    c0, kmax = 0, 0
    for c, k in enumerate(count):
        k_new = max(kmax, k)
        if c > c0 and (c + 1 - c0) * k_new * per_key_block > CHUNK_ELEMENTS:
            out.append((c0, c, kmax))
            c0, k_new = c, k
        kmax = k_new
    out.append((c0, len(count), kmax))
    return out


# Elements (heads x queries x gathered keys) of one chunk of query blocks: bounds the temporary memory of the
# gathered keys/values and of the scores (~8 MiB of fp32 scores per chunk).
CHUNK_ELEMENTS = 1 << 21


class _GatheredBlockAttention(torch.autograd.Function):
    """softmax(q·kgᵀ masked)·vg over gathered key blocks, computed chunk by chunk of query blocks.

    Like FlashAttention, only the inputs, the output and the row log-sum-exp are kept for backward; the gathered
    keys/values and the probabilities are rebuilt chunk by chunk in backward. So the memory is O(T) plus one chunk,
    instead of the (queries x gathered keys) probabilities and the duplicated gathered keys/values that autograd
    would keep. Dropout masks are regenerated in backward from a per-call seed.

    q (H, B, NQ, QB, D) already scaled; ktab/vtab (H, B * NTAB, KB * D) the key/value table; flat (B, NQ, Kmax)
    rows of the table; mask bool (B, NQ, QB, Kmax * KB). Returns (H, B, NQ, QB, D).
    """

    @staticmethod
    def forward(ctx, q, ktab, vtab, flat, mask, dropout_p, seed, chunks):
        H, B, NQ, QB, D = q.shape
        kb = ktab.size(-1) // D
        out = torch.empty_like(q)
        lse = torch.empty(H, B, NQ, QB, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
        for c0, c1, kc in chunks:
            qc, kg, vg = _chunk_inputs(q, ktab, vtab, flat, c0, c1, kc)
            s = softmax_dtype(torch.matmul(qc, kg.transpose(-1, -2)))  # (H, B, n, QB, kc * KB)
            s.masked_fill_(~mask[:, c0:c1, :, : kc * kb], float("-inf"))
            m = s.amax(-1, keepdim=True)
            s.sub_(m).exp_()
            denom = s.sum(-1, keepdim=True)
            s.div_(denom)
            lse[:, :, c0:c1] = (m + denom.log()).squeeze(-1)
            if dropout_p > 0:
                s.mul_(_keep_mask(s, dropout_p, seed + c0))
            out[:, :, c0:c1] = torch.matmul(s.to(vg.dtype), vg)
        ctx.save_for_backward(q, ktab, vtab, flat, mask, out, lse)
        ctx.dropout_p, ctx.seed, ctx.chunks = dropout_p, seed, chunks
        return out

    @staticmethod
    def backward(ctx, dout):
        q, ktab, vtab, flat, mask, out, lse = ctx.saved_tensors
        dropout_p, seed, chunks = ctx.dropout_p, ctx.seed, ctx.chunks
        H, B, NQ, QB, D = q.shape
        kb = ktab.size(-1) // D
        acc = torch.promote_types(q.dtype, torch.float32)
        dout = dout.contiguous()
        delta = (dout.to(acc) * out.to(acc)).sum(-1)  # (H, B, NQ, QB): rowsum(dP ∘ P) = rowsum(dO ∘ O)
        dq = torch.empty_like(q)
        dktab = torch.zeros(ktab.shape, dtype=acc, device=ktab.device)
        dvtab = torch.zeros(vtab.shape, dtype=acc, device=vtab.device)
        for c0, c1, kc in chunks:
            qc, kg, vg = _chunk_inputs(q, ktab, vtab, flat, c0, c1, kc)
            rows = _chunk_rows(flat, c0, c1, kc)
            doc = dout[:, :, c0:c1]
            p = softmax_dtype(torch.matmul(qc, kg.transpose(-1, -2)))  # recomputed scores -> probabilities
            p.masked_fill_(~mask[:, c0:c1, :, : kc * kb], float("-inf"))
            p.sub_(lse[:, :, c0:c1, :, None]).exp_()
            dp = softmax_dtype(torch.matmul(doc, vg.transpose(-1, -2)))  # (H, B, n, QB, Kg)
            if dropout_p > 0:
                keep = _keep_mask(p, dropout_p, seed + c0)
                dvg = torch.matmul((p * keep).transpose(-1, -2).to(q.dtype), doc)
                dp.mul_(keep)
            else:
                dvg = torch.matmul(p.transpose(-1, -2).to(q.dtype), doc)  # (H, B, n, Kg, D)
            dp.sub_(delta[:, :, c0:c1, :, None]).mul_(p)  # dS = P ∘ (dP - delta)
            ds = dp.to(q.dtype)
            dq[:, :, c0:c1] = torch.matmul(ds, kg)
            dkg = torch.matmul(ds.transpose(-1, -2), qc)  # (H, B, n, Kg, D)
            dktab.index_add_(1, rows, dkg.reshape(H, rows.numel(), -1).to(acc))
            dvtab.index_add_(1, rows, dvg.reshape(H, rows.numel(), -1).to(acc))
        return dq, dktab.to(ktab.dtype), dvtab.to(vtab.dtype), None, None, None, None, None


def _chunk_rows(flat, c0, c1, kc):
    return flat[:, c0:c1, :kc].reshape(-1)


def _chunk_inputs(q, ktab, vtab, flat, c0, c1, kc):
    """Query blocks c0:c1 (contiguous) and their first kc gathered key blocks as (H, B, n, kc * KB, D)."""
    H, B, _, _, D = q.shape
    rows = _chunk_rows(flat, c0, c1, kc)
    n = c1 - c0
    kg = ktab.index_select(1, rows).view(H, B, n, -1, D)
    vg = vtab.index_select(1, rows).view(H, B, n, -1, D)
    return q[:, :, c0:c1].contiguous(), kg, vg


def _keep_mask(p, dropout_p, seed):
    """Dropout keep mask scaled by 1 / (1 - p), reproducible from ``seed`` (forward and backward agree)."""
    g = torch.Generator(device=p.device)
    g.manual_seed(seed)
    keep = torch.rand(p.shape, generator=g, device=p.device, dtype=p.dtype) >= dropout_p
    return keep.to(p.dtype) / (1.0 - dropout_p)


def attend_regular_sparse(q_reg, k_reg, v_reg, k2_sum, v2_sum, layout: BarLayout, scheme: BarScheme,
                          dropout_p=0.0, training=False, block_size: int = 64):
    """Aggregation (spec §2.2 step 5), block-sparse. Same contract as ``attention.attend_regular_dense``.

    q_reg (B, H, Tq, D) = the last Tq positions of the layout, k_reg/v_reg (B, H, T, D), k2_sum/v2_sum (B, H, S, D).
    Returns (B, H, Tq, D).
    """
    B, H, Tq, D = q_reg.shape
    T = k_reg.size(2)
    S = k2_sum.size(2)
    plan = plan_blocks(layout, scheme, Tq, S, block_size)
    idx, mask, qb, kb = plan["idx"], plan["mask"], plan["qb"], plan["kb"]
    n_sblk, n_rblk = plan["n_sblk"], plan["n_rblk"]
    n_qblk, kmax = idx.shape[1], idx.shape[2]
    n_tab = n_sblk + n_rblk

    def table(x_sum, x_reg):
        # (B, H, S, D) + (B, H, T, D) -> (H, B * n_tab, KB * D): [summary blocks | regular blocks] per sample.
        parts = [F.pad(x_sum, (0, 0, 0, n_sblk * kb - S)), F.pad(x_reg, (0, 0, 0, n_rblk * kb - T))]
        tab = torch.cat(parts, dim=2).transpose(0, 1)  # (H, B, n_tab * KB, D)
        return tab.reshape(H, B * n_tab, kb * D)

    flat = idx + torch.arange(B, device=idx.device)[:, None, None] * n_tab  # (B, NQ, Kmax) table rows
    q = q_reg.transpose(0, 1) * (1.0 / math.sqrt(D))  # (H, B, Tq, D)
    q = F.pad(q, (0, 0, 0, n_qblk * qb - Tq)).reshape(H, B, n_qblk, qb, D)
    p = dropout_p if training else 0.0
    seed = int(torch.randint(0, 2**62, (1,))) if p > 0 else 0  # from the global RNG: torch.manual_seed applies
    chunks = _chunks(plan["count"], H * B * qb * kb)
    out = _GatheredBlockAttention.apply(q, table(k2_sum, k_reg), table(v2_sum, v_reg), flat, mask, p, seed, chunks)
    out = out.reshape(H, B, n_qblk * qb, D)[:, :, :Tq]  # (H, B, Tq, D)
    return out.transpose(0, 1)  # (B, H, Tq, D)
