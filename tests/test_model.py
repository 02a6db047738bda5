"""Museformer model: causality, padding invariance, dense = sparse, parameter count, schemes, embeddings."""
import pytest
import torch
import torch.nn.functional as F

from needs import require_fairseq

require_fairseq()

from lm_data import make_data_bin, make_model, make_task, write_dict  # noqa: E402

# Float32 on CPU: a forward over a different sequence length or batch changes summation order in matmuls and
# softmax, which moves logits by ~1e-6; a real leak or a padding bug moves them by > 1e-2.
ATOL = 1e-5


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    # Songs of 10-14 bars (~250 tokens): long enough for coarse summaries (bar ≥ 4) and several 64-token blocks.
    return make_task(make_data_bin(tmp_path_factory.mktemp("lm"), num_songs=6, seed=1, min_bars=10, max_bars=14))


@pytest.fixture(scope="module")
def songs(task):
    ds = task.load_dataset("train")
    return [ds[i] for i in range(len(ds))]


def logits_of(model, src_tokens, **net_input):
    with torch.no_grad():
        return model(src_tokens, **net_input)[0]


@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_causality(task, songs, impl):
    """Changing any token at position >= t (or cutting the sequence at t) changes no logit before t."""
    model = make_model(task, impl=impl)
    src = max(songs, key=lambda s: s["source"].numel())["source"][None]  # (1, T)
    T = src.size(1)
    full = logits_of(model, src)
    gen = torch.Generator().manual_seed(0)
    bar = task.bar_token
    bar1_end = int((src[0] == bar).nonzero()[0])  # position of bar 1's b-1
    for t in [1, 2, bar1_end, bar1_end + 1, T // 2, T - 1]:  # BOS only, inside bar 1, bar boundary, later bars
        changed = src.clone()
        n = T - t
        changed[0, t:] = torch.randint(task.dictionary.nspecial, len(task.dictionary), (n,), generator=gen)
        changed[0, t + 1 :: 5] = bar  # extra bar ends, so the change also moves bar ids and summaries after t
        changed[0, t] = src[0, t] + 1 if src[0, t] + 1 < len(task.dictionary) else task.dictionary.nspecial
        out = logits_of(model, changed)
        assert torch.allclose(out[:, :t], full[:, :t], atol=ATOL), f"{impl}: changing tokens >= {t} leaked back"
        assert not torch.allclose(out[:, t:], full[:, t:], atol=ATOL), "the change must be visible after t"
        prefix = logits_of(model, src[:, :t])
        assert torch.allclose(prefix, full[:, :t], atol=ATOL), f"{impl}: prefix of length {t} != full forward"


def token_losses(model, batch):
    net = batch["net_input"]
    lprobs = F.log_softmax(logits_of(model, **net).float(), dim=-1)
    return -lprobs.gather(-1, batch["target"][..., None])[..., 0]  # (B, T)


@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_padding_invariance(task, songs, impl):
    """A song's per-token loss is the same alone and padded inside a batch of longer songs."""
    model = make_model(task, impl=impl)
    ds = task.datasets["train"]
    by_len = sorted(songs, key=lambda s: s["source"].numel())
    short = by_len[0]
    n = short["source"].numel()
    alone = token_losses(model, ds.collater([short]))[0]
    batch = ds.collater([by_len[-1], short, by_len[-2]])
    assert batch["net_input"]["src_tokens"].size(1) > n, "the batch must pad the short song"
    in_batch = token_losses(model, batch)[1]
    assert torch.allclose(in_batch[:n], alone, atol=ATOL)
    # The loss criterion skips pad targets: only the song's own tokens count.
    assert batch["ntokens"] == sum(s["target"].numel() for s in (by_len[-1], short, by_len[-2]))


def test_dense_equals_sparse(task, songs):
    dense = make_model(task, impl="dense", seed=3)
    sparse = make_model(task, impl="sparse", seed=3)
    sparse.load_state_dict(dense.state_dict())
    batch = task.datasets["train"].collater(songs[:4])  # padded batch, several blocks of 64 tokens
    out_d = logits_of(dense, **batch["net_input"])
    out_s = logits_of(sparse, **batch["net_input"])
    real = batch["target"].ne(task.dictionary.pad())
    assert torch.allclose(out_d[real], out_s[real], atol=ATOL), (out_d[real] - out_s[real]).abs().max()


def test_parameter_count_matches_spec(tmp_path):
    """--arch museformer_lm at dict size 560 has the original's 16,141,312 parameters (spec §4.1)."""
    # The original dict.txt's families (spec §1.8): 556 symbols + 4 fairseq specials = 560.
    symbols = (["b-0", "b-1"] + [f"o-{k}" for k in range(64)] + [f"i-{k}" for k in (0, 25, 43, 48, 80, 128)]
               + [f"p-{k}" for k in range(256)] + [f"d-{k}" for k in range(128)] + [f"v-{k}" for k in range(32)]
               + [f"t-{k}" for k in range(49)] + ["<c>", "</c>"] + [f"u-{k}" for k in range(17)])
    write_dict(tmp_path / "dict.txt", symbols)
    task = make_task(tmp_path)
    assert len(task.dictionary) == 560
    from museformer_plugin.model import MuseformerLanguageModel, MuseformerModelConfig

    model = MuseformerLanguageModel.build_model(MuseformerModelConfig(max_target_positions=100000),
                                                task)
    n_params = sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in model.decoder.layers[0].parameters())
    assert per_layer == 3_678_208
    assert n_params == 16_141_312


def test_schemes_switch_behaviour(task, songs):
    """full vs museformer attention differ from bar 4 on (the first bar with a coarse bar), not before."""
    from museformer_plugin.bar_layout import MUSEFORMER_COARSE, MUSEFORMER_FINE

    song = max(songs, key=lambda s: s["source"].numel())
    src, bar_ids = song["source"][None], song["bar_ids"][None]
    outs = {}
    for name, kw in {
        "museformer": {},
        "full": {"attention_scheme": "full"},
        "no-coarse": {"attention_scheme": "no-coarse"},
        # The preset written in the original's nested-tuple syntax, overriding the 'full' preset.
        "museformer-by-tuples": {"attention_scheme": "full", "con2con": f"(({MUSEFORMER_FINE!r},),)",
                                 "con2sum": f"(({MUSEFORMER_COARSE!r},),)"},
    }.items():
        outs[name] = logits_of(make_model(task, seed=5, **kw), src)
    early, late = bar_ids[0] <= 3, bar_ids[0] >= 4
    assert late.any()
    for name in ("full", "no-coarse"):
        assert torch.allclose(outs[name][0, early], outs["museformer"][0, early], atol=ATOL)
        assert not torch.allclose(outs[name][0, late], outs["museformer"][0, late], atol=1e-3), name
    assert torch.allclose(outs["museformer-by-tuples"], outs["museformer"], atol=ATOL)


def test_incremental_state_matches_full_forward(task, songs):
    """forward with incremental_state (the KV cache of incremental.py): prefill, then one token per call."""
    model = make_model(task, impl="sparse")
    src = songs[0]["source"][None, :40]
    full = logits_of(model, src)
    state = {}
    with torch.no_grad():
        prefill, _ = model.decoder(src[:, :30], incremental_state=state)
        steps = [model.decoder(src[:, : t + 1], incremental_state=state)[0] for t in range(30, 40)]
    assert prefill.shape == (1, 30, len(task.dictionary))
    assert all(s.shape == (1, 1, len(task.dictionary)) for s in steps)
    assert torch.allclose(torch.cat([prefill] + steps, dim=1), full, atol=ATOL)


def test_sinusoid_matches_fairseq_table():
    from fairseq.modules.sinusoidal_positional_embedding import SinusoidalPositionalEmbedding

    from museformer_plugin.model import sinusoid

    for dim in (128, 256):
        table = SinusoidalPositionalEmbedding.get_embedding(700, dim, padding_idx=0)
        ids = torch.tensor([[0, 1, 5, 699], [-1, 2, 3, 513]])
        expected = table[ids.clamp(min=0)]
        assert torch.allclose(sinusoid(ids, dim), expected, atol=1e-5)
        assert (sinusoid(ids, dim)[1, 0] == 0).all(), "padding bar id -1 embeds to zeros"


def test_checkpoint_activations_same_loss_and_gradients(task, songs):
    """--checkpoint-activations recomputes each layer in backward: the same loss and parameter gradients as
    keeping the activations, with dropout and attention dropout on (their masks are replayed), and it keeps
    less for backward (the layer activations are not saved)."""
    batch = task.datasets["train"].collater(songs[:3])
    results = []
    for ckpt in (False, True):
        model = make_model(task, impl="sparse", seed=7, dropout=0.1, attention_dropout=0.1,
                           checkpoint_activations=ckpt).train()
        saved = []
        torch.manual_seed(11)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            lprobs = F.log_softmax(model(**batch["net_input"])[0].float(), dim=-1)
        loss = F.nll_loss(lprobs.view(-1, lprobs.size(-1)), batch["target"].view(-1), reduction="sum",
                          ignore_index=task.dictionary.pad())
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved)))
    (loss_a, grads_a, saved_a), (loss_b, grads_b, saved_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-6)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert saved_b < saved_a / 2, (saved_b, saved_a)
