"""The flex backend (FlexAttention) equals the dense reference, and its BlockMask lists exactly the right blocks.

torch runs FlexAttention forward on CPU in eager mode, but not its backward (NotImplementedError), so this file
checks outputs only; the gradient equality runs in the CUDA tests of ``benchmarks/gpu_check.py`` (marker ``gpu``).
Eager flex evaluates the element mask over every (query, key) pair: it does NOT skip unlisted blocks, so the
output equality alone cannot catch a missing block. The block-list tests below check that separately against the
dense reference masks. fp32, tolerance 1e-5 as in test_attention.py.
"""
import random

import pytest
import torch

from attention_data import BAR, BOS, NOTE, layout_from_tokens, make_layout, make_song, qkv, random_batch
from measure import block_mask_nbytes
from museformer_plugin.attention import FineCoarseAttention, get_backend, resolve_impl
from museformer_plugin.attention import dense, flex
from museformer_plugin.bar_layout import BarLayout, BarScheme, dense_masks

pytestmark = [
    pytest.mark.skipif(not flex.flex_available(), reason="this torch has no FlexAttention"),
    pytest.mark.usefixtures("one_torch_thread"),
]
TOL = dict(atol=1e-5, rtol=1e-5)
PRESETS = ["museformer", "full", "recent8", "no-coarse"]


def long_bar_batch(seed):
    """Bars of up to 300 tokens (several 128-token blocks per bar) next to short ones, one unfinished song."""
    rng = random.Random(seed)
    songs = [make_song(rng, 6, 300, complete=False), make_song(rng, 30, 12), make_song(rng, 3, 200)]
    return make_layout(songs)


def outputs(t, layout, scheme, backend):
    with torch.no_grad():
        z = backend.attend_summaries(t["q_sum"], t["k_sum"], t["v_sum"], t["k_reg"], t["v_reg"], layout)
        out = backend.attend_regular(t["q_reg"], t["k_reg"], t["v_reg"], t["k2"], t["v2"], layout, scheme)
    return z, out


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("batch", ["short-bars", "long-bars"])
def test_flex_equals_dense(preset, batch):
    scheme = BarScheme.from_args(preset)
    layout = random_batch(3, max_bars=40) if batch == "short-bars" else long_bar_batch(4)
    t = qkv(layout, seed=1)
    z_ref, out_ref = outputs(t, layout, scheme, dense)
    z, out = outputs(t, BarLayout(layout.bar_ids, layout.num_complete_bars), scheme, flex)
    torch.testing.assert_close(z, z_ref, **TOL)
    torch.testing.assert_close(out, out_ref, **TOL)


def padded_masks(layout, scheme):
    """The dense reference masks laid out on flex's padded axes: (B, Tp, Sp + Tp) and (B, Sp, Sp + Tp)."""
    reg, summ = dense_masks(layout, scheme)  # keys [summaries S | tokens T]
    B, T = layout.bar_ids.shape
    S = layout.num_summary_slots
    tb = flex._tables(layout, S)
    Sp, Tp = tb.Sp, tb.Tp
    reg_p = torch.zeros(B, Tp, Sp + Tp, dtype=torch.bool)
    reg_p[:, :T, :S] = reg[:, :, :S]
    reg_p[:, :T, Sp : Sp + T] = reg[:, :, S:]
    sum_p = torch.zeros(B, Sp, Sp + Tp, dtype=torch.bool)
    sum_p[:, :S, :S] = summ[:, :, :S]
    sum_p[:, :S, Sp : Sp + T] = summ[:, :, S:]
    return reg_p, sum_p


def block_sets(block_mask):
    """(listed, full) as bool (B, nQ, nK) from a BlockMask's partial and full block lists."""
    def dense_of(num, idx):
        B, _, nQ, nK = idx.shape
        out = torch.zeros(B, nQ, nK, dtype=torch.bool)
        for b in range(B):
            for i in range(nQ):
                out[b, i, idx[b, 0, i, : num[b, 0, i]].long()] = True
        return out

    partial = dense_of(block_mask.kv_num_blocks, block_mask.kv_indices)
    if block_mask.full_kv_num_blocks is None:
        return partial, torch.zeros_like(partial)
    full = dense_of(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    assert not (partial & full).any(), "a block is listed both as partial and as full"
    return partial | full, full


def check_blocks(mask, block_mask, rows_real):
    """Every visible element lies in a listed block; every full block is visible everywhere (real query rows)."""
    B, Q, K = mask.shape
    blk = flex.BLOCK
    per_block = mask.view(B, Q // blk, blk, K // blk, blk)
    listed, full = block_sets(block_mask)
    any_visible = per_block.any(4).any(2)  # (B, nQ, nK)
    assert not (any_visible & ~listed).any(), "a block with visible pairs is not listed"
    real = rows_real.view(B, Q // blk, blk)  # full blocks must have no padding rows
    all_visible = per_block.all(4).all(2) & real.all(-1)[:, :, None]
    assert not (full & ~all_visible).any(), "a block marked full has hidden pairs"
    return listed, full


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_block_lists_cover_exactly_the_visible_blocks(preset, seed):
    scheme = BarScheme.from_args(preset)
    layout = random_batch(seed, max_bars=200, max_bar_len=20) if seed == 0 else long_bar_batch(seed)
    S = layout.num_summary_slots
    reg_p, sum_p = padded_masks(layout, scheme)
    tb = flex._tables(layout, S)
    rows_real = tb.qbar.ne(-1)
    listed, full = check_blocks(reg_p, flex.regular_block_mask(layout, scheme, S), rows_real)
    # The lists are tight: nearly every listed block holds a visible pair (the bar-level bounds may add a few).
    visible = reg_p.view(*reg_p.shape[:1], -1, flex.BLOCK, reg_p.size(2) // flex.BLOCK, flex.BLOCK).any(4).any(2)
    assert (listed & ~visible).sum() <= 0.1 * listed.sum()
    if preset == "full":  # plain causal attention: every block strictly below the diagonal is full
        assert full.any()
    check_blocks(sum_p, flex.summary_block_mask(layout, S), torch.ones(sum_p.shape[:2], dtype=torch.bool))


def test_element_mask_equals_dense_mask():
    """The mask_mod inside partial blocks is exactly the dense reference (evaluated on the whole padded grid)."""
    layout = long_bar_batch(7)
    scheme = BarScheme.from_args("museformer")
    S = layout.num_summary_slots
    reg_p, sum_p = padded_masks(layout, scheme)
    B, Q, K = reg_p.shape
    b, q, kv = torch.arange(B)[:, None, None], torch.arange(Q)[None, :, None], torch.arange(K)[None, None, :]
    got = flex.regular_block_mask(layout, scheme, S).mask_mod(b, 0, q, kv)
    T = layout.bar_ids.size(1)
    torch.testing.assert_close(got[:, :T], reg_p[:, :T])  # padded rows past T are discarded
    q = torch.arange(sum_p.size(1))[None, :, None]
    got = flex.summary_block_mask(layout, S).mask_mod(b, 0, q, kv)
    torch.testing.assert_close(got[:, :S], sum_p[:, :S])


def test_block_mask_memory_is_tiny_at_16k():
    """A 16k-token song of ~130-token bars: the BlockMasks hold block indices only, far below a T×T mask."""
    rng = random.Random(0)
    toks = [BOS]
    while len(toks) < 16384:
        toks += [NOTE] * rng.randint(100, 160) + [BAR]
    toks = toks[:16384]
    layout = layout_from_tokens(torch.tensor([toks]), BAR, 1)
    scheme = BarScheme.from_args("museformer")
    S = layout.num_summary_slots
    reg = flex.regular_block_mask(layout, scheme, S)
    summ = flex.summary_block_mask(layout, S)
    nbytes = block_mask_nbytes(reg) + block_mask_nbytes(summ)
    T = len(toks)
    nq, nk = T // flex.BLOCK, (T + flex._round_up(S, flex.BLOCK)) // flex.BLOCK
    assert nbytes <= 8 * 4 * nq * nk + 4096  # block counts and int32 indices, both directions, nothing per element
    assert nbytes < T * T / 1000  # a T×T bool mask is 256 MiB here; these are about 0.3 MB
    listed, _ = block_sets(reg)
    assert listed.sum() < 0.35 * nq * nq  # sparse: about the attended fraction of the causal triangle


def test_flex_layer_equals_dense_layer_and_shares_masks():
    """FineCoarseAttention(impl='flex') == impl='dense' (eval), and one BlockMask per batch for every layer."""
    layout = random_batch(5, max_bars=30)
    scheme = BarScheme.from_args("museformer")
    torch.manual_seed(0)
    ref = FineCoarseAttention(32, 4, impl="dense").eval()
    fx = FineCoarseAttention(32, 4, impl="flex").eval()
    fx.load_state_dict(ref.state_dict())
    B, T = layout.bar_ids.shape
    x, xs = torch.randn(B, T, 32), torch.randn(B, layout.num_summary_slots, 32)
    with torch.no_grad():
        a, b = ref(x, xs, layout, scheme), fx(x, xs, layout, scheme)
        first = layout.cache[("flex-regular", scheme, layout.num_summary_slots)]
        fx(x, xs, layout, scheme)
        assert layout.cache[("flex-regular", scheme, layout.num_summary_slots)] is first
    torch.testing.assert_close(b[0], a[0], **TOL)
    torch.testing.assert_close(b[1], a[1], **TOL)


def test_dropout_choice_is_explicit():
    """FlexAttention has no attention dropout: explicit flex refuses to train with it, auto falls back to sparse."""
    assert resolve_impl("auto", "cpu", dropout_active=False) == "sparse"
    assert resolve_impl("auto", "cuda", dropout_active=False) == "flex"
    assert resolve_impl("auto", "cuda", dropout_active=True) == "sparse"
    assert resolve_impl("flex", "cpu", dropout_active=False) == "flex"
    with pytest.raises(ValueError, match="attention dropout"):
        resolve_impl("flex", "cuda", dropout_active=True)
    m = FineCoarseAttention(16, 2, attention_dropout=0.1, impl="flex").train()
    layout = make_layout([[BOS, NOTE, BAR, NOTE]])
    with pytest.raises(ValueError, match="attention dropout"):
        m(torch.randn(1, 4, 16), torch.randn(1, 1, 16), layout, BarScheme.from_args("museformer"))
    assert m.eval().backend_for(torch.zeros(1)) is get_backend("flex")  # evaluation has no dropout: flex runs
    with pytest.raises(ValueError, match="unknown attention impl"):
        FineCoarseAttention(16, 2, impl="triton")
