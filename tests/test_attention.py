"""FC-Attention: the block-sparse path equals the dense reference (outputs and gradients), plus mask properties.

All comparisons run in fp32 on CPU. Tolerance 1e-5 (abs and rel): both paths sum the same products in a
different order (gathered blocks vs full rows), which moves fp32 results by ~1e-7; a wrong mask entry moves them
by ~1e-2 (see the mutation tests).
"""
import copy
import random

import pytest
import torch
import torch.nn.functional as F

from museformer_plugin.attention import sparse as attention_sparse
from museformer_plugin.attention import sparse_plan
from museformer_plugin.attention import FineCoarseAttention
from museformer_plugin.attention.dense import attend_regular as attend_regular_dense
from museformer_plugin.attention.dense import attend_summaries as attend_summaries_dense
from museformer_plugin.attention.sparse import attend_regular as attend_regular_sparse
from museformer_plugin.attention.sparse import attend_summaries as attend_summaries_sparse
from attention_data import BAR, BOS, NOTE, make_layout, make_song, qkv, random_batch
from museformer_plugin.bar_layout import BarScheme

TOL = dict(atol=1e-5, rtol=1e-5)
PRESETS = ["museformer", "full", "recent8", "no-coarse"]


def run_both_steps(t, layout, scheme, impl, block_size=64, fused=None):
    """z and aggregation output of one impl, and the gradients of every input for a fixed random cotangent.

    ``fused``: for the sparse impl, True = torch's CPU flash-attention kernel per chunk, False = the explicit
    matmul + softmax kernel (the one used with dropout and on GPU), None = the default choice."""
    for x in t.values():
        x.grad = None
    if impl == "dense":
        z = attend_summaries_dense(t["q_sum"], t["k_sum"], t["v_sum"], t["k_reg"], t["v_reg"], layout)
        out = attend_regular_dense(t["q_reg"], t["k_reg"], t["v_reg"], t["k2"], t["v2"], layout, scheme)
    else:
        z = attend_summaries_sparse(t["q_sum"], t["k_sum"], t["v_sum"], t["k_reg"], t["v_reg"], layout, fused=fused)
        out = attend_regular_sparse(t["q_reg"], t["k_reg"], t["v_reg"], t["k2"], t["v2"], layout, scheme,
                                    block_size=block_size, fused=fused)
    g = torch.Generator().manual_seed(123)
    loss = (out * torch.randn(out.shape, generator=g)).sum() + (z * torch.randn(z.shape, generator=g)).sum()
    loss.backward()
    grads = {k: x.grad.clone() for k, x in t.items() if x.grad is not None}
    return z.detach(), out.detach(), grads


def assert_same(a, b):
    za, oa, ga = a
    zb, ob, gb = b
    torch.testing.assert_close(ob, oa, **TOL)
    torch.testing.assert_close(zb, za, **TOL)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], **TOL, msg=lambda m: f"grad of {k}: {m}")


@pytest.mark.parametrize("kernel", ["fused", "explicit"])
@pytest.mark.parametrize("block_size", [1, 5, 16, 64], ids=lambda b: f"block{b}")
@pytest.mark.parametrize("preset", PRESETS)
def test_sparse_equals_dense(preset, block_size, kernel):
    scheme = BarScheme.from_args(preset)
    for seed in range(2):
        # Block size 1 makes one block per token: keep those songs shorter so the test stays fast.
        layout = random_batch(seed + 10 * block_size, max_bars=60 if block_size > 1 else 25)
        t = qkv(layout, seed=seed)
        assert_same(run_both_steps(t, layout, scheme, "dense"),
                    run_both_steps(t, layout, scheme, "sparse", block_size, fused=kernel == "fused"))


@pytest.mark.parametrize("kernel", ["fused", "explicit"])
def test_long_bars_split_into_blocks(kernel, monkeypatch):
    """Bars of up to 150 tokens are cut into several query blocks (block 64); still equal to the dense result,
    with several chunks (a small chunk budget) so that per-chunk padding is exercised too."""
    rng = random.Random(21)
    songs = [make_song(rng, 9, 150, complete=False), make_song(rng, 5, 150)]
    layout = make_layout(songs)
    scheme = BarScheme.from_args("museformer")
    t = qkv(layout, seed=8)
    plan = attention_sparse.plan_bar_blocks(layout, scheme, layout.bar_ids.size(1), layout.num_summary_slots, 64)
    assert max(plan.q_len) <= 64 and len(plan.q_len) > len(songs[0]) // 64
    monkeypatch.setattr(attention_sparse, "CHUNK_ELEMENTS", 1 << 14)
    assert len(plan.chunks(2, attention_sparse.CHUNK_ELEMENTS)) > 3
    assert_same(run_both_steps(t, layout, scheme, "dense"),
                run_both_steps(t, layout, scheme, "sparse", 64, fused=kernel == "fused"))


@pytest.mark.parametrize("preset", PRESETS)
def test_plan_lists_only_keys_the_block_sees(preset):
    """Efficiency as a property: every key in a block's list is visible to at least one query of the block (the
    plan gathers nothing that the block does not attend to), and each real query is in exactly one block."""
    layout = random_batch(4, max_bars=40, max_bar_len=30)
    scheme = BarScheme.from_args(preset)
    B, T = layout.bar_ids.shape
    plan = attention_sparse.plan_bar_blocks(layout, scheme, T, layout.num_summary_slots, 16)
    real_q = plan.q_pos < T  # (NBLK, QMAX)
    real_k = plan.b_thr < attention_sparse.NEVER  # regular keys; listed summaries are visible to every query
    seen = ((plan.b_thr[:, None, :] <= plan.q_pos[:, :, None]) & real_q[:, :, None]).any(1)  # (NBLK, BMAX)
    assert torch.equal(seen, real_k)
    assert real_k.sum(-1).tolist() == plan.b_lens and real_q.sum(-1).tolist() == plan.q_len
    assert plan.a_len.tolist() == plan.a_lens
    assert sorted(plan.q_src[real_q].tolist()) == list(range(B * T))
    assert torch.equal(plan.q_dst[real_q], plan.q_src[real_q]) and bool((plan.q_dst[~real_q] == B * T).all())
    # ...and that the plan is built once per layout and shared by the layers of a forward pass.
    assert attention_sparse.plan_bar_blocks(layout, scheme, T, layout.num_summary_slots, 16) is plan


@pytest.mark.parametrize("con2con,con2sum", [
    ("((((-32, 0),),),)", None),  # a long fine range (original's nesting), summaries of everything older
    ("((((None, 0),),),)", "((None,),)"),  # full causal, no summaries, in the original's syntax
    ("(-32,)", "((None, -1),)"),  # bare commands: a single far bar fine, all other previous bars coarse
], ids=["range-32", "full-none", "only-32"])
def test_long_ranges(con2con, con2sum):
    scheme = BarScheme.from_args("museformer", con2con=con2con, con2sum=con2sum)
    layout = random_batch(7, max_bars=60, max_bar_len=4)
    t = qkv(layout, seed=3)
    for bs in (8, 64):
        assert_same(run_both_steps(t, layout, scheme, "dense"), run_both_steps(t, layout, scheme, "sparse", bs))


@pytest.mark.parametrize("songs", [
    [[BOS]],  # BOS only: no bars, no summaries
    [[BOS, BAR]],  # one 1-token bar
    [[BOS, NOTE, NOTE]],  # one unfinished bar
    [[BOS, BAR, BAR, BAR, NOTE], [BOS, NOTE, BAR]],  # 1-token bars, padding, different summary counts
], ids=["bos-only", "one-1-token-bar", "unfinished-only", "tiny-batch"])
def test_tiny_songs(songs):
    layout = make_layout(songs)
    t = qkv(layout, seed=1)
    for preset in PRESETS:
        scheme = BarScheme.from_args(preset)
        assert_same(run_both_steps(t, layout, scheme, "dense"), run_both_steps(t, layout, scheme, "sparse", 64))


@pytest.mark.parametrize("tq", [1, 5, 70])
def test_last_queries_only(tq):
    """Queries for the last Tq positions only (incremental decoding) equal the matching rows of the full call."""
    layout = random_batch(3, max_bars=30)
    scheme = BarScheme.from_args("museformer")
    t = qkv(layout, seed=2)
    full = attend_regular_dense(t["q_reg"], t["k_reg"], t["v_reg"], t["k2"], t["v2"], layout, scheme)
    q_last = t["q_reg"][:, :, -tq:]
    for fn in (attend_regular_dense, attend_regular_sparse):
        out = fn(q_last, t["k_reg"], t["v_reg"], t["k2"], t["v2"], layout, scheme)
        torch.testing.assert_close(out, full[:, :, -tq:], **TOL)


def test_full_preset_is_causal_attention():
    """With the `full` preset and no summaries, the aggregation is plain causal attention (an independent check)."""
    layout = make_layout([make_song(random.Random(0), 20, 12, complete=False)])
    t = qkv(layout, seed=4)
    out = attend_regular_sparse(t["q_reg"], t["k_reg"], t["v_reg"], t["k2"], t["v2"], layout,
                                BarScheme.from_args("full"), block_size=16)
    ref = F.scaled_dot_product_attention(t["q_reg"], t["k_reg"], t["v_reg"], is_causal=True)
    torch.testing.assert_close(out, ref, **TOL)


def test_worked_example_weights():
    """Uniform scores (q = 0) and one-hot values reveal which keys each query sees: spec §2.4, for both impls."""
    layout = make_layout([[BOS] + [NOTE, BAR] * 5])
    S, T = 5, 11
    eye = torch.eye(S + T)[None, None]  # head dim S + T: value of key j is the one-hot vector of column j
    q, k, k2 = torch.zeros(1, 1, T, S + T), torch.zeros(1, 1, T, S + T), torch.zeros(1, 1, S, S + T)
    v, v2 = eye[:, :, S:], eye[:, :, :S]
    expected = {  # query position -> visible keys ("S1" = summary of bar 1, "r3" = regular position 3)
        0: "r0", 1: "r0 r1", 2: "r0 r1 r2", 3: "r0 r1 r2 r3", 4: "r0 r1 r2 r3 r4",
        5: "r0 r1 r2 r3 r4 r5", 6: "r0 r1 r2 r3 r4 r5 r6",
        7: "S1 r0 r3 r4 r5 r6 r7", 8: "S1 r0 r3 r4 r5 r6 r7 r8",
        9: "S2 r0 r1 r2 r5 r6 r7 r8 r9", 10: "S2 r0 r1 r2 r5 r6 r7 r8 r9 r10",
    }
    names = [f"S{j + 1}" for j in range(S)] + [f"r{j}" for j in range(T)]
    scheme = BarScheme.from_args("museformer")
    for fn in (attend_regular_dense, attend_regular_sparse):
        w = fn(q, k, v, k2, v2, layout, scheme)[0, 0]  # (T, S + T): row = attention weights
        for row, keys in expected.items():
            seen = " ".join(n for n, x in zip(names, w[row]) if x > 0)
            assert seen == keys, f"{fn.__name__}: query r{row} sees {seen!r}, expected {keys!r}"
            torch.testing.assert_close(w[row].sum(), torch.tensor(1.0))


def test_mutation_corrupted_mask_is_detected(monkeypatch):
    """Hiding one visible key from the sparse path must break the comparison (the test can fail)."""
    layout = random_batch(5, max_bars=20)
    scheme = BarScheme.from_args("museformer")
    t = qkv(layout, seed=5)
    ref = run_both_steps(t, layout, scheme, "dense")
    real_plan = sparse_plan._plan_bar_blocks

    def corrupted_plan(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        thr = plan.b_thr.clone()
        blk, col = (thr == sparse_plan.ALWAYS).nonzero()[len(thr) // 2]  # one key a whole block sees
        thr[blk, col] = sparse_plan.NEVER
        plan.b_thr = thr
        return plan

    monkeypatch.setattr(sparse_plan, "_plan_bar_blocks", corrupted_plan)
    with pytest.raises(AssertionError):
        assert_same(ref, run_both_steps(t, layout, scheme, "sparse", 16))


def test_mutation_other_scheme_is_detected():
    """A scheme differing in one fine offset (-8 -> -9) gives a different result."""
    layout = random_batch(6, max_bars=20)
    t = qkv(layout, seed=6)
    ref = run_both_steps(t, layout, BarScheme.from_args("museformer"), "dense")
    other = BarScheme.from_args("museformer", con2con="((-2, 0), -4, -9, -12, -16, -24, -32)")
    with pytest.raises(AssertionError):
        assert_same(ref, run_both_steps(t, layout, other, "sparse", 16))


def module_pair(dim=16, heads=2, block_size=8):
    torch.manual_seed(0)
    dense = FineCoarseAttention(dim, heads, impl="dense")
    with torch.no_grad():  # non-zero biases, so that the per-stream biases are exercised
        for p in (dense.reg_qkv_bias, dense.sum_qkv_bias, dense.out_proj.bias):
            p.normal_()
    sparse = FineCoarseAttention(dim, heads, impl="sparse", block_size=block_size)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def module_inputs(layout, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = layout.bar_ids.shape
    return torch.randn(B, T, dim, generator=g), torch.randn(B, layout.num_summary_slots, dim, generator=g)


@pytest.mark.parametrize("preset", PRESETS)
def test_module_sparse_equals_dense(preset):
    """Module outputs and gradients of every parameter and both inputs agree between the two impls."""
    dense, sparse = module_pair()
    layout = random_batch(11, max_bars=40)
    scheme = BarScheme.from_args(preset)
    x_reg, x_sum = module_inputs(layout)
    results = []
    for m in (dense, sparse):
        xr, xs = x_reg.clone().requires_grad_(), x_sum.clone().requires_grad_()
        out_reg, out_sum = m(xr, xs, layout, scheme)
        g = torch.Generator().manual_seed(1)
        ((out_reg * torch.randn(out_reg.shape, generator=g)).sum()
         + (out_sum * torch.randn(out_sum.shape, generator=g)).sum()).backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        grads.update(x_reg=xr.grad, x_sum=xs.grad)
        results.append((out_reg.detach(), out_sum.detach(), grads))
    (ra, sa, ga), (rb, sb, gb) = results
    torch.testing.assert_close(rb, ra, **TOL)
    torch.testing.assert_close(sb, sa, **TOL)
    unused = {"k2_proj.weight", "v2_proj.weight"} if scheme.coarse is None else set()  # no summary is read
    assert all(g.abs().sum() > 0 for k, g in ga.items() if k not in unused), "every parameter needs a gradient"
    for k in ga:
        # A parameter's gradient sums ~1000 positions with cancellations: its fp32 rounding error scales with the
        # largest entry, so the absolute tolerance does too (1e-5 of it).
        atol = 1e-5 * max(1.0, float(ga[k].abs().max()))
        torch.testing.assert_close(gb[k], ga[k], atol=atol, rtol=1e-5, msg=lambda m: f"grad of {k}: {m}")


def test_module_parameters_and_init():
    m = FineCoarseAttention(512, 8)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {
        "q_proj.weight": (512, 512), "k_proj.weight": (512, 512), "v_proj.weight": (512, 512),
        "reg_qkv_bias": (3, 512), "sum_qkv_bias": (3, 512),
        "k2_proj.weight": (512, 512), "v2_proj.weight": (512, 512),
        "out_proj.weight": (512, 512), "out_proj.bias": (512,),
    }
    # Xavier-uniform bound sqrt(6 / (fan_in + fan_out)) times the gain.
    bound = (6 / 1024) ** 0.5
    assert m.q_proj.weight.abs().max() <= bound / 2 ** 0.5 + 1e-7
    assert m.q_proj.weight.abs().max() > 0.9 * bound / 2 ** 0.5
    assert m.out_proj.weight.abs().max() > 0.9 * bound / 2 ** 0.5 * 1.2  # gain 1, larger than 1/sqrt(2)
    assert float(m.reg_qkv_bias.abs().sum() + m.sum_qkv_bias.abs().sum() + m.out_proj.bias.abs().sum()) == 0


@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_module_causality(impl):
    """Changing future tokens (and the summaries of the current and later bars) changes no earlier output."""
    dense, sparse = module_pair()
    m = dense if impl == "dense" else sparse
    layout = random_batch(12, max_bars=25, batch=1)
    scheme = BarScheme.from_args("museformer")
    x_reg, x_sum = module_inputs(layout)
    base, _ = m(x_reg, x_sum, layout, scheme)
    T = x_reg.size(1)
    for p in (0, 5, T // 2, T - 2):
        bar = int(layout.bar_ids[0, p])
        xr, xs = x_reg.clone(), x_sum.clone()
        xr[:, p + 1 :] += 10 * torch.randn_like(xr[:, p + 1 :])
        xs[:, max(bar - 1, 0) :] += 10 * torch.randn_like(xs[:, max(bar - 1, 0) :])  # slots of bars >= bar
        out, _ = m(xr, xs, layout, scheme)
        torch.testing.assert_close(out[:, : p + 1], base[:, : p + 1], **TOL)
        assert not torch.allclose(out[:, p + 1 :], base[:, p + 1 :]), "the perturbation should matter later"


@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_padding_invariance(impl):
    """A song alone and the same song inside a padded batch give the same outputs for its real positions."""
    dense, sparse = module_pair()
    m = dense if impl == "dense" else sparse
    rng = random.Random(13)
    short = make_song(rng, 7, 9)
    long = make_song(rng, 30, 9, complete=False)
    scheme = BarScheme.from_args("museformer")
    alone = make_layout([short])
    batch = make_layout([long, short])
    xr_b, xs_b = module_inputs(batch)
    n, s = len(short), alone.num_summary_slots
    out_a, sum_a = m(xr_b[1:, :n], xs_b[1:, :s], alone, scheme)
    out_b, sum_b = m(xr_b, xs_b, batch, scheme)
    torch.testing.assert_close(out_b[1:, :n], out_a, **TOL)
    torch.testing.assert_close(sum_b[1:, :s], sum_a, **TOL)


def test_bf16_and_dropout_run():
    """Lower precision runs (softmax in fp32) and stays close to fp32; dropout is active only in training."""
    _, m = module_pair()
    layout = random_batch(14, max_bars=10)
    scheme = BarScheme.from_args("museformer")
    x_reg, x_sum = module_inputs(layout)
    ref, _ = m(x_reg, x_sum, layout, scheme)
    out, _ = copy.deepcopy(m).to(torch.bfloat16)(x_reg.bfloat16(), x_sum.bfloat16(), layout, scheme)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)  # bf16 has an 8-bit mantissa
    m.attention_dropout = 0.5
    m.eval()
    torch.testing.assert_close(m(x_reg, x_sum, layout, scheme)[0], ref)
    m.train()
    xr = x_reg.clone().requires_grad_()
    out, out_sum = m(xr, x_sum, layout, scheme)
    assert not torch.allclose(out, ref)
    (out.sum() + out_sum.sum()).backward()
    assert torch.isfinite(xr.grad).all()


@pytest.mark.parametrize("kernel,dropout", [("explicit", 0.0), ("explicit", 0.3), ("fused", 0.0)])
def test_sparse_backward_gradcheck(kernel, dropout):
    """The hand-written backward of the chunked bar-block attention (both kernels, dropout included) passes
    torch's gradcheck in float64, over several chunks of uneven padding."""
    layout = random_batch(15, max_bars=6, max_bar_len=5, batch=2)
    scheme = BarScheme.from_args("museformer")
    B, T = layout.bar_ids.shape
    S = layout.num_summary_slots
    plan = attention_sparse.plan_bar_blocks(layout, scheme, T, S, 4)
    chunks = plan.chunks(2, 200)
    assert len(chunks) > 1
    g = torch.Generator().manual_seed(0)
    H, D = 2, 3

    def table(rows):
        return torch.randn(rows, H, D, generator=g, dtype=torch.float64).requires_grad_()

    tables = (table(B * T), table(B * S), table(B * S), table(B * T), table(B * T))  # q, K2, V2, K, V
    fn = lambda *t: attention_sparse._BarBlockAttention.apply(  # noqa: E731
        *t, plan, chunks, 0.7, dropout, 1234, kernel == "fused")[:-1]
    assert torch.autograd.gradcheck(fn, tables, eps=1e-6, atol=1e-6)


def test_bad_arguments_are_refused():
    """A block size below 1 and a forced fused kernel where it cannot run give a clear ValueError."""
    with pytest.raises(ValueError, match="block_size must be at least 1"):
        FineCoarseAttention(16, 2, block_size=0)
    layout = random_batch(16, max_bars=5)
    scheme = BarScheme.from_args("museformer")
    t = qkv(layout, seed=9)
    args = (t["q_reg"], t["k_reg"], t["v_reg"], t["k2"], t["v2"], layout, scheme)
    with pytest.raises(ValueError, match="block_size must be at least 1"):
        attend_regular_sparse(*args, block_size=0)
    with pytest.raises(ValueError, match="fused CPU attention kernel needs"):
        attend_regular_sparse(*args, dropout_p=0.1, training=True, fused=True)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_window_fused_equals_reference(with_lengths):
    """The cached decoder's fp32 window (one fused SDPA call) equals the explicit form on random windows, with and
    without per-sample lengths; keys past a sample's length do not change its output."""
    from museformer_plugin.attention.window import attend_window, attend_window_reference

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(3, 4, 2, 16, generator=gen)
    k, v = torch.randn(3, 4, 37, 16, generator=gen), torch.randn(3, 4, 37, 16, generator=gen)
    lengths = torch.tensor([37, 1, 20]) if with_lengths else None
    fused = attend_window(q, k, v, lengths)
    torch.testing.assert_close(fused, attend_window_reference(q, k, v, lengths), **TOL)
    torch.testing.assert_close(fused, attend_window_reference(q.double(), k.double(), v.double(), lengths).float(),
                               **TOL)
    if with_lengths:
        k2, v2 = k.clone(), v.clone()
        k2[2, :, 20:], v2[2, :, 20:] = 1e3, -1e3
        torch.testing.assert_close(attend_window(q, k2, v2, lengths), fused, **TOL)
