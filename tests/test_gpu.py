"""CUDA tests (marker ``gpu``, skipped without CUDA; benchmarks/gpu_check.py part a runs them):
flex, sparse and dense agree on CUDA (fp32 and bf16, outputs and every input and parameter gradient), and the
cached decoder (prefill + steps) equals the full forward on CUDA.

    pytest -m gpu tests/test_gpu.py -q

On CUDA the flex backend is compiled (``torch.compile(flex_attention, dynamic=True)``) and its backward runs (on
CPU torch has none, so tests/test_attention_flex.py checks outputs only); the sparse backend runs its explicit
matmul + softmax kernel (the fused one is CPU-only). Head dim 64: FlexAttention's CUDA kernels need a power of 2
of at least 16. These tests import no fairseq except the cached-decoder one.

Tolerances.
* fp32 1e-4 (abs and rel), TF32 off: the three backends sum the same products in different orders and tiles
  (~1e-6 here); a wrong mask entry moves a row by ~1e-1.
* bf16: every backend runs on the same bf16 inputs and is compared with the dense reference in fp32 on those
  inputs, by normwise relative error ||x - ref|| / ||ref||. bf16 keeps 8 significand bits (unit roundoff
  u = 2^-9 ≈ 2e-3); the forward rounds the output and, before P·V, the probabilities (a few u in all); the
  backward rounds dO, P, dS and the input gradients (about twice that). Bounds: 1e-2 (outputs, ~5u) and 2e-2
  (gradients, ~10u). Measured on CPU (dense and sparse, bf16 vs fp32): <= 1.1e-3 (outputs), <= 6e-3
  (gradients); dropping one fine bar (the mutation test) gives 0.18 on the output. The errors are printed with
  a failure.
"""
import random
import tempfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():  # before the imports below, which would import fairseq (seconds) for nothing
    pytest.skip("needs a CUDA GPU (benchmarks/gpu_check.py runs these tests)", allow_module_level=True)

from needs import FAIRSEQ_REASON, has_fairseq  # noqa: E402
from attention_data import make_layout, make_song, qkv, random_batch  # noqa: E402
from museformer_plugin.attention import FineCoarseAttention, dense, flex, sparse  # noqa: E402
from museformer_plugin.bar_layout import BarLayout, BarScheme  # noqa: E402

DEV = "cuda"
TOL32 = dict(atol=1e-4, rtol=1e-4)
BF16_OUT, BF16_GRAD = 1e-2, 2e-2
HEADS, HEAD_DIM = 2, 64
NAMES = ("q_sum", "k_sum", "v_sum", "k_reg", "v_reg", "q_reg", "k2", "v2")


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 matmuls in full precision (the TF32 default differs between torch versions)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def long_bar_layout(seed):
    """Bars of up to 300 tokens (several 128-token flex blocks, several sparse query blocks) beside short ones."""
    rng = random.Random(seed)
    return make_layout([make_song(rng, 6, 300, complete=False), make_song(rng, 30, 12), make_song(rng, 3, 200)])


LAYOUTS = {"short-bars": lambda: random_batch(3, max_bars=40), "long-bars": lambda: long_bar_layout(4)}


def cuda_layout(layout):
    """A fresh copy of the layout on CUDA (nothing cached: each backend builds its own plan / BlockMask)."""
    return BarLayout(layout.bar_ids.to(DEV), layout.num_complete_bars.to(DEV))


def to_device(layout, t, dtype):
    """A fresh CUDA layout and fresh leaf copies of the inputs in ``dtype``."""
    return cuda_layout(layout), {k: v.detach().to(DEV, dtype).requires_grad_() for k, v in t.items()}


def both_steps(backend, t, layout, scheme):
    """z, aggregation output and every input gradient for a fixed random cotangent (all fp32)."""
    z = backend.attend_summaries(t["q_sum"], t["k_sum"], t["v_sum"], t["k_reg"], t["v_reg"], layout)
    out = backend.attend_regular(t["q_reg"], t["k_reg"], t["v_reg"], t["k2"], t["v2"], layout, scheme)
    g = torch.Generator(device=DEV).manual_seed(123)
    loss = (out.float() * torch.randn(out.shape, generator=g, device=DEV)).sum()
    loss = loss + (z.float() * torch.randn(z.shape, generator=g, device=DEV)).sum()
    loss.backward()
    assert all(t[k].grad is not None for k in NAMES), "every input must get a gradient"
    return dict(z=z.detach().float(), out=out.detach().float(), **{k: t[k].grad.float() for k in NAMES})


def rel_err(x, ref):
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


@pytest.mark.parametrize("batch", list(LAYOUTS))
@pytest.mark.parametrize("preset", ["museformer", "full", "no-coarse"])
@pytest.mark.parametrize("impl", ["flex", "sparse"])
def test_backend_equals_dense_fp32(impl, preset, batch):
    layout = LAYOUTS[batch]()
    scheme = BarScheme.from_args(preset)
    t = qkv(layout, heads=HEADS, dim=HEAD_DIM, seed=1)
    lay_ref, t_ref = to_device(layout, t, torch.float32)
    lay, t_new = to_device(layout, t, torch.float32)  # a fresh layout: no plan or mask cached by the reference
    ref = both_steps(dense, t_ref, lay_ref, scheme)
    got = both_steps(flex if impl == "flex" else sparse, t_new, lay, scheme)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], **TOL32, msg=lambda m: f"{impl} {k}: {m}")


@pytest.mark.parametrize("impl", ["dense", "flex", "sparse"])
def test_backend_bf16_close_to_fp32_reference(impl):
    layout = long_bar_layout(5)
    scheme = BarScheme.from_args("museformer")
    t = {k: v.detach().to(torch.bfloat16) for k, v in qkv(layout, heads=HEADS, dim=HEAD_DIM, seed=2).items()}
    lay_ref, t32 = to_device(layout, t, torch.float32)  # the same (bf16-representable) values in fp32
    lay, t16 = to_device(layout, t, torch.bfloat16)
    ref = both_steps(dense, t32, lay_ref, scheme)
    got = both_steps({"dense": dense, "flex": flex, "sparse": sparse}[impl], t16, lay, scheme)
    errs = {k: rel_err(got[k], ref[k]) for k in ref}
    bad = {k: e for k, e in errs.items() if e > (BF16_OUT if k in ("z", "out") else BF16_GRAD)}
    assert not bad, f"{impl} bf16 vs fp32 dense, normwise relative errors above bound: {bad} (all: {errs})"


def test_bf16_check_catches_a_wrong_mask():
    """Mutation test: the bf16 bound fails when bar -4 is dropped from the fine selection."""
    layout = random_batch(7, max_bars=40)
    scheme = BarScheme.from_args("museformer")
    wrong = BarScheme(tuple(o for o in scheme.fine if o != -4), scheme.coarse)
    t = {k: v.detach().to(torch.bfloat16) for k, v in qkv(layout, heads=HEADS, dim=HEAD_DIM, seed=3).items()}
    lay_ref, t32 = to_device(layout, t, torch.float32)
    lay, t16 = to_device(layout, t, torch.bfloat16)
    ref = both_steps(dense, t32, lay_ref, scheme)
    got = both_steps(flex, t16, lay, wrong)
    assert rel_err(got["out"], ref["out"]) > BF16_OUT


def test_sparse_runs_explicit_kernel_in_chunks(monkeypatch):
    """On CUDA the sparse path uses its explicit kernel; with a small chunk budget a call spans many chunks, with
    per-chunk padding, and still equals the dense reference (outputs and gradients)."""
    layout = long_bar_layout(6)
    scheme = BarScheme.from_args("museformer")
    t = qkv(layout, heads=HEADS, dim=HEAD_DIM, seed=4)
    lay_ref, t_ref = to_device(layout, t, torch.float32)
    lay, t_new = to_device(layout, t, torch.float32)
    assert not sparse.fused_kernel_available(t_new["q_reg"], 0.0), "the fused kernel is CPU-only"
    monkeypatch.setattr(sparse, "CUDA_CHUNK_ELEMENTS", 1 << 14)
    T, S = layout.bar_ids.size(1), layout.num_summary_slots
    plan = sparse.plan_bar_blocks(lay, scheme, T, S, 256)
    assert len(plan.chunks(2 * HEADS, sparse.CUDA_CHUNK_ELEMENTS, sparse.CUDA_CHUNK_WASTE)) > 3
    ref = both_steps(dense, t_ref, lay_ref, scheme)
    got = both_steps(sparse, t_new, lay, scheme)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], **TOL32, msg=lambda m: f"sparse {k}: {m}")


@pytest.mark.parametrize("impl", ["flex", "sparse"])
def test_module_equals_dense_with_parameter_gradients(impl):
    """The whole FineCoarseAttention module (projections, K2/V2, Wo): outputs, input and parameter gradients."""
    layout = long_bar_layout(8)
    scheme = BarScheme.from_args("museformer")
    B, T = layout.bar_ids.shape
    C = HEADS * HEAD_DIM
    torch.manual_seed(0)
    ref_m = FineCoarseAttention(C, HEADS, impl="dense").to(DEV)
    for bias in (ref_m.reg_qkv_bias, ref_m.sum_qkv_bias, ref_m.out_proj.bias):  # zero at init; make them count
        torch.nn.init.normal_(bias, std=0.05)
    m = FineCoarseAttention(C, HEADS, impl=impl).to(DEV)
    m.load_state_dict(ref_m.state_dict())
    x = torch.randn(B, T, C, device=DEV)
    xs = torch.randn(B, layout.num_summary_slots, C, device=DEV)
    results = []
    for mod in (ref_m, m):
        xr, xsr = x.clone().requires_grad_(), xs.clone().requires_grad_()
        out, out_sum = mod(xr, xsr, cuda_layout(layout), scheme)
        (out.square().mean() + out_sum.square().mean()).backward()
        grads = {n: p.grad for n, p in mod.named_parameters()}
        results.append(dict(out=out.detach(), out_sum=out_sum.detach(), x=xr.grad, xs=xsr.grad, **grads))
    ref, got = results
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], **TOL32, msg=lambda m: f"{impl} module {k}: {m}")


def test_cached_decoder_equals_full_forward():
    """Prefill a right-padded batch of prompts, then one column per call on CUDA: the logits equal the full
    forward's (flex, compiled, on CUDA in eval mode) at every position (fp32, 1e-4: different kernels and key
    orders; a wrong summary or window moves logits by > 1e-2)."""
    if not has_fairseq():
        pytest.skip(FAIRSEQ_REASON)
    from lm_data import dict_symbols, make_model, make_task, write_dict
    from museformer_plugin.incremental import forward_incremental

    data = Path(tempfile.mkdtemp(prefix="test_gpu_"))
    write_dict(data / "dict.txt", dict_symbols())
    task = make_task(data)
    model = make_model(task, impl="auto", decoder_attention_heads=2, decoder_embed_dim=128).to(DEV)
    d = task.dictionary
    rng = random.Random(0)
    notes = [i for i, s in enumerate(d.symbols) if i >= d.nspecial and not s.startswith("b-")]
    songs = []
    for n in (150, 120):  # a b-1 every 2-6 tokens: 30+ bars, coarse summaries and far fine offsets are used
        toks, until = [d.eos()], rng.randint(2, 6)
        while len(toks) < n:
            until -= 1
            toks.append(task.bar_token if until == 0 else rng.choice(notes))
            until = rng.randint(2, 6) if until == 0 else until
        songs.append(torch.tensor(toks, device=DEV))
    prompt = 40
    with torch.no_grad():
        refs = [model(s[None])[0][0] for s in songs]  # (T, V) each
        width = max(s.numel() for s in songs)
        tokens = torch.full((len(songs), width), d.pad(), device=DEV)
        for b, s in enumerate(songs):
            tokens[b, : s.numel()] = s
        state = {}
        out, _ = forward_incremental(model.decoder, tokens[:, :prompt], state)  # prefill
        steps = [out[:, -1]]
        for t in range(prompt, width):
            out, _ = forward_incremental(model.decoder, tokens[:, : t + 1], state)
            steps.append(out[:, -1])
    inc = torch.stack(steps, 1)  # (B, width - prompt + 1, V): predictions after positions prompt - 1 ..
    for b, (s, ref) in enumerate(zip(songs, refs)):
        n = s.numel() - prompt + 1
        err = (inc[b, :n] - ref[prompt - 1:]).abs().amax()
        assert float(err) < 1e-4, f"song {b}: cached logits differ from the full forward by {float(err):.2e}"
