"""Bar-aligned block-sparse FC-Attention in plain PyTorch: same signatures and outputs as the dense reference.

Only the (query, key) pairs that can be attended are computed (plus a little padding), so the cost grows about
linearly with the length for the Museformer bar selection. No custom build: gathers and, per chunk of blocks,
torch's own fused CPU flash-attention op or a plain matmul + softmax, on CPU and GPU, in any float dtype (softmax
statistics in fp32). Which queries and keys form a block is planned in ``sparse_plan.py``; this module is the
autograd kernel over a plan and the two entry points, ``attend_regular`` (aggregation, spec §2.2 step 5) and
``attend_summaries`` (summarisation, step 3).

Keys come from two streams, kept as the caller's tensors (nothing is concatenated or copied whole): stream A =
the summary tokens, stream B = the regular tokens. One softmax runs over both: each part is attended on its own
and the two results are merged with their log-sum-exps (exact; the backward pass of each part uses the merged
output and log-sum-exp). The autograd function keeps its inputs (no copies), the output and the row log-sum-exp,
and recomputes each chunk in backward, as FlashAttention does: O(T) memory.
"""
from __future__ import annotations

import functools

import torch

from ..bar_layout import BarLayout, BarScheme
from .common import head_scale, no_summaries, softmax_dtype
from .sparse_plan import (CHUNK_ELEMENTS, CHUNK_WASTE, CUDA_CHUNK_ELEMENTS, CUDA_CHUNK_WASTE, NEVER, plan_bar_blocks,
                          plan_summary_blocks)

HAS_DROPOUT = True

# torch's fused CPU flash-attention op (and ``_backward``): returns the row log-sum-exp, takes an additive mask.
_FLASH = "_scaled_dot_product_flash_attention_for_cpu"


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
    (each summary is one block: its own key and exactly its bar); ``fused`` as in ``attend_regular``.
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
