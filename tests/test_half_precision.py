"""Half precision end to end: the whole model in bf16 and fp16 runs forward and backward and agrees with fp32.

Tolerances. bf16 keeps 8 significand bits (unit roundoff u = 2^-9 ≈ 2e-3), fp16 11 bits (u ≈ 5e-4). A tiny
2-layer model rounds its activations about a dozen times between the embedding and the logits (embedding sum,
q/k/v, attention output, Wo, two FFN matmuls, LayerNorms), so the relative error of the logits is a small multiple
of u: measured ≈ 6e-3 (bf16) and ≈ 8e-4 (fp16). The bounds below are 4-5× that: 3e-2 (bf16), 4e-3 (fp16). A dtype
bug (an fp16 overflow, a mask lost in a cast, a summary in the wrong dtype) gives NaN or O(1) errors. Gradients are
compared by cosine similarity of all parameter gradients together (≥ 0.99 bf16, ≥ 0.999 fp16; measured 0.999+ and
0.99999), since single tiny entries have large relative errors.
"""
import argparse
import random

import pytest
import torch
from needs import require_fairseq

require_fairseq()

from lm_data import dict_symbols, make_data_bin, make_model, make_task, write_dict
from museformer_plugin.attention import dense, sparse, window  # noqa: E402
from attention_data import layout_from_tokens  # noqa: E402
from museformer_plugin.bar_layout import BarScheme  # noqa: E402
from museformer_plugin.fairseq_compat import fix_half_precision_args  # noqa: E402
from museformer_plugin.incremental import forward_incremental  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REL_TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
COS_TOL = {torch.bfloat16: 0.99, torch.float16: 0.999}
DTYPES = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    data = tmp_path_factory.mktemp("half")
    write_dict(data / "dict.txt", dict_symbols())
    return make_task(data)


def batch(task, lengths=(160, 120), seed=0):
    """src (B, T) = [BOS] + random tokens with a b-1 every 3-8 tokens (20+ bars: summaries are used), right-padded,
    and the targets (next tokens, pad where there is none)."""
    rng = random.Random(seed)
    d = task.dictionary
    music = [i for i, s in enumerate(d.symbols) if i >= d.nspecial and not s.startswith("b-")]
    T = max(lengths)
    src = torch.full((len(lengths), T), d.pad())
    for b, n in enumerate(lengths):
        toks, until = [d.eos()], rng.randint(3, 8)
        while len(toks) < n:
            until -= 1
            toks.append(task.bar_token if until == 0 else rng.choice(music))
            until = rng.randint(3, 8) if until == 0 else until
        src[b, :n] = torch.tensor(toks)
    tgt = torch.cat([src[:, 1:], torch.full((len(lengths), 1), d.pad())], 1)
    return src, tgt


def loss_and_grads(model, src, tgt, pad):
    model.zero_grad()
    logits = model(src)[0]
    loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), tgt, ignore_index=pad)
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return logits.detach().float(), grads


def rel_err(a, b, valid):
    return float((a - b)[valid].norm() / b[valid].norm())


def build(task, kind):
    if kind == "linear":
        from museformer_plugin.linear_lm import LinearDecoder, MuseformerLinearLM, MuseformerLinearLMConfig

        cfg = MuseformerLinearLMConfig(decoder_layers=2, decoder_embed_dim=64, decoder_ffn_embed_dim=128,
                                       decoder_attention_heads=4, max_target_positions=4096)
        torch.manual_seed(0)
        return MuseformerLinearLM(LinearDecoder(cfg, task.dictionary, task.bar_token)).eval()
    return make_model(task, impl=kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["sparse", "dense", "flex", "linear"])
def test_model_in_half_precision_matches_fp32(task, kind, dtype):
    src, tgt = batch(task)
    pad = task.dictionary.pad()
    valid = src.ne(pad)
    ref = build(task, kind)
    half = build(task, kind).to(dtype)
    if kind == "flex":  # FlexAttention has no CPU backward: forward only here, gradients in the GPU check
        with torch.no_grad():
            ref_logits, logits = ref(src)[0], half(src)[0]
        assert logits.dtype == dtype
        assert rel_err(logits.float(), ref_logits, valid) < REL_TOL[dtype]
        return
    ref_logits, ref_grads = loss_and_grads(ref, src, tgt, pad)
    logits, grads = loss_and_grads(half, src, tgt, pad)
    assert torch.isfinite(logits).all() and torch.isfinite(grads).all()
    assert rel_err(logits, ref_logits, valid) < REL_TOL[dtype]
    cos = float(torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0))
    assert cos > COS_TOL[dtype], f"gradient cosine {cos}"
    assert all(p.dtype == dtype for p in half.parameters())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cached_decoder_in_half_precision(task, dtype):
    """Prefill + cached steps in bf16/fp16 agree with the fp32 full forward, for a batch of two songs whose prompts
    differ in length (each row its own cache positions and window lengths)."""
    src, _ = batch(task, lengths=(150, 150), seed=3)
    ref = make_model(task, impl="sparse")
    half = make_model(task, impl="sparse").to(dtype)
    pad = task.dictionary.pad()
    prompt = src[:, :40].clone()
    prompt[1, 25:] = pad  # row 1: a 25-token prompt, then one token per call like row 0 (a right-padded prefill)
    with torch.no_grad():
        full = ref(src)[0]
        state = {}
        first = forward_incremental(half.decoder, prompt, state)[0]
        seq = prompt
        steps = []
        for t in range(40, 150):
            col = torch.stack([src[0, t], src[1, t - 15]])[:, None]
            seq = torch.cat([seq, col], 1)
            steps.append(forward_incremental(half.decoder, seq, state)[0][:, -1].float())
    steps = torch.stack(steps, 1)  # (2, 110, V)
    assert first.dtype == dtype and torch.isfinite(steps).all()
    ones = torch.ones(110, dtype=torch.bool)
    assert rel_err(steps[0], full[0, 40:150], ones) < REL_TOL[dtype]
    assert rel_err(steps[1], full[1, 25:135], ones) < REL_TOL[dtype]


def test_fp16_scores_cannot_overflow():
    """|q·k| = 102,400 > fp16's 65,504 for these heads, but (q/√D)·k = 12,800 fits: every backend scales q first."""
    songs = [[2] + [7] * 5 + [5] + [7] * 4 + [5] + [7] * 3]
    layout = layout_from_tokens(torch.tensor(songs), 5, 1)
    scheme = BarScheme.from_args("museformer")
    B, T, S, H, D = 1, len(songs[0]), layout.num_summary_slots, 1, 64
    g = torch.Generator().manual_seed(0)

    def big(n):  # entries ±40, all of one sign per row: q·k = 64 · 1600
        return (40 * torch.randn(B, H, n, D, generator=g).sign().abs()).half()

    q, k, v = big(T), big(T), torch.randn(B, H, T, D, generator=g).half()
    k2, v2 = big(S), torch.randn(B, H, S, D, generator=g).half()
    ref = dense.attend_regular(q.double(), k.double(), v.double(), k2.double(), v2.double(), layout, scheme)
    for fn in (dense.attend_regular, sparse.attend_regular):
        out = fn(q, k, v, k2, v2, layout, scheme)
        assert out.dtype == torch.float16 and torch.isfinite(out).all(), fn.__module__
        torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)
    out = window.attend_window(q[:, :, -1:], k, v)
    assert torch.isfinite(out).all()


def test_summary_dropout_is_drawn_per_sample(task):
    """In training, two samples with the same summary slots get different dropout masks (was: one per batch)."""
    model = make_model(task, impl="sparse", dropout=0.5).train()
    slots = torch.arange(1, 9).expand(2, 8)
    x = model.decoder.embed_summaries(slots)  # (2, 8, C)
    assert x.shape == (2, 8, 64)
    assert not torch.equal(x[0], x[1])
    model.eval()
    x = model.decoder.embed_summaries(slots)
    assert torch.equal(x[0], x[1])


def test_fairseq_bf16_arguments_are_fixed():
    args = argparse.Namespace(bf16=True, tpu=True, cpu=True, fp16=False, memory_efficient_fp16=False,
                              memory_efficient_bf16=False, fp16_no_flatten_grads=False)
    fix_half_precision_args(args)
    assert args.tpu is False  # fairseq turned --bf16 into --tpu; without torch_xla that cannot run
    assert args.fp16_no_flatten_grads is True  # FP16Optimizer's flat master copy needs CUDA
    args = argparse.Namespace(bf16=False, tpu=False, cpu=True, fp16=False, memory_efficient_fp16=False,
                              memory_efficient_bf16=False, fp16_no_flatten_grads=False)
    fix_half_precision_args(args)
    assert args.fp16_no_flatten_grads is False  # fp32 training is left alone


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    from test_train_smoke import fairseq_cli, train_args

    tmp = tmp_path_factory.mktemp("bf16")
    data_dir = make_data_bin(tmp, num_songs=24, seed=0)
    save_dir = tmp / "ckpt"
    log = fairseq_cli("train", *train_args(data_dir, save_dir, 16), "--bf16", cwd=tmp)
    return tmp, data_dir, save_dir, log


def test_fairseq_train_bf16_on_cpu(bf16_run):
    from test_train_smoke import json_records

    _, _, save_dir, log = bf16_run
    assert "training in bf16 on cpu" in log
    steps = [float(r["loss"]) for r in json_records(log) if "loss" in r and "bsz" in r]
    assert len(steps) >= 3 and steps[-1] < steps[0] - 0.5, steps
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=True, map_location="cpu")
    w = state["model"]["decoder.embed_tokens.weight"]  # fairseq saves fp32; the model that trained was bf16
    assert torch.equal(w, w.bfloat16().float())


def test_fairseq_validate_flex_equals_sparse(bf16_run):
    """fairseq-validate with --model-overrides "{'attention_impl': 'flex'}" gives the sparse path's loss."""
    from test_train_smoke import USER_DIR, fairseq_cli, last_valid_loss

    tmp, data_dir, save_dir, _ = bf16_run
    losses = {}
    for impl in ("sparse", "flex"):
        out = fairseq_cli("validate", data_dir, "--user-dir", USER_DIR, "--task", "museformer_lm",
                          "--path", save_dir / "checkpoint_last.pt", "--valid-subset", "valid", "--batch-size", 2,
                          "--cpu", "--log-format", "json", "--model-overrides", str({"attention_impl": impl}),
                          cwd=tmp)
        losses[impl] = last_valid_loss(out)
    assert abs(losses["flex"] - losses["sparse"]) < 1e-3, losses
