"""KV-cached incremental decoding (museformer_plugin/incremental.py) must give the full forward's logits.

Sequences are random dictionary tokens with SHORT bars (a ``b-1`` every 2-6 tokens), so a few hundred tokens span
40+ bars: coarse summaries (bar ≥ 4 for the paper's scheme) and the farthest fine offset (32 bars) are all used,
and every step where a summary is created (the ``b-1`` steps) is compared.
"""
import random

import pytest
import torch

from needs import require_fairseq

require_fairseq()

from lm_data import dict_symbols, make_model, make_task, write_dict  # noqa: E402
from museformer_plugin.incremental import SHARED_KEY, NUM_COMPLETE, STATE_KEY, forward_incremental, reorder  # noqa: E402

# Float32 on CPU: the cached step sums the same terms in a different order than the full forward (other key order,
# other matmul shapes), which moves logits by ~1e-6; a wrong mask, bar id or summary moves them by > 1e-2.
ATOL = 1e-5


# Tiny matmuls: extra OpenMP threads only add contention on a shared CI machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    data = tmp_path_factory.mktemp("inc")
    write_dict(data / "dict.txt", dict_symbols())  # the task needs only dict.txt
    return make_task(data)


def random_song(task, num_tokens: int, seed: int):
    """[BOS] + random music tokens with a b-1 every 2-6 tokens and frequent o- tokens (beat ids change)."""
    rng = random.Random(seed)
    d = task.dictionary
    onsets = [i for i, s in enumerate(d.symbols) if s.startswith("o-")]
    others = [i for i, s in enumerate(d.symbols) if i >= d.nspecial and not s.startswith(("o-", "b-"))]
    toks, until_bar = [d.eos()], rng.randint(2, 6)
    while len(toks) < num_tokens:
        until_bar -= 1
        if until_bar == 0:
            toks.append(task.bar_token)
            until_bar = rng.randint(2, 6)
        else:
            toks.append(rng.choice(onsets) if rng.random() < 0.3 else rng.choice(others))
    return torch.tensor(toks)


def full_logits(model, song):
    with torch.no_grad():
        return model(song[None])[0][0]  # (T, V)


def incremental_logits(model, song):
    """Logits after each position, one token per call (fairseq's SequenceGenerator convention)."""
    state, outs = {}, []
    with torch.no_grad():
        for t in range(song.numel()):
            out, _ = forward_incremental(model.decoder, song[None, : t + 1], state)
            assert out.shape == (1, 1, len(model.decoder.dictionary))
            outs.append(out[0, -1])
    return torch.stack(outs), state


@pytest.mark.parametrize("scheme", ["museformer", "recent8", "full"])
@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_step_by_step_equals_full_forward(task, impl, scheme):
    model = make_model(task, impl=impl, attention_scheme=scheme)
    song = random_song(task, 180, seed=1)
    num_bars = int(song.eq(task.bar_token).sum())
    assert num_bars >= 36, "the song must reach past the farthest fine offset (32 bars)"
    inc, state = incremental_logits(model, song)
    ref = full_logits(model, song)
    err = (inc - ref).abs().amax(-1)  # (T,)
    assert err.max() < ATOL, f"{impl}/{scheme}: step {int(err.argmax())} differs by {float(err.max()):.2e}"
    # Every complete bar got exactly one cached summary.
    assert int(model.decoder.get_incremental_state(state, STATE_KEY)["bookkeeping"][0, NUM_COMPLETE]) == num_bars


def test_cache_is_used(task):
    """Mutation test: corrupting the cached summaries, regular keys or window changes the next logits."""
    model = make_model(task, impl="sparse")
    dec = model.decoder
    song = random_song(task, 60, seed=2)
    ref = full_logits(model, song)
    bar_ends = song.eq(task.bar_token).nonzero().flatten().tolist()
    new_bar = bar_ends[5] + 1  # first token of bar 7: its window is rebuilt from s_k (bar 4's summary) and k
    mid_bar = new_bar + 1  # a step inside the bar reads only the window
    for name, t in (("s_k", new_bar), ("k", new_bar), ("w_v", mid_bar)):
        with torch.no_grad():
            state = {}
            forward_incremental(dec, song[None, :t], state)  # prefill positions < t
            cache = dec.get_incremental_state(state, STATE_KEY)
            saved = {n: v.clone() for n, v in cache.items()}
            ok, _ = forward_incremental(dec, song[None, : t + 1], state)
            assert torch.allclose(ok[0, -1], ref[t], atol=ATOL)
            cache = dec.get_incremental_state(state, STATE_KEY)
            cache.update({n: v.clone() for n, v in saved.items()})
            dec.set_incremental_state(state, SHARED_KEY, {"consumed": torch.tensor(t)})
            cache[f"{name}0"].normal_()
            bad, _ = forward_incremental(dec, song[None, : t + 1], state)
        assert not torch.allclose(ok[0, -1], bad[0, -1], atol=1e-3), f"corrupting {name} must change the logits"


@pytest.mark.parametrize("padding", ["right", "left"])
def test_batch_with_different_prompt_lengths(task, padding):
    """A padded batch of prompts (prefill in one call), then one column per call; each row = its song alone."""
    model = make_model(task, impl="sparse", seed=1)
    pad = task.dictionary.pad()
    songs = [random_song(task, n, seed=10 + i) for i, n in enumerate((90, 120, 100))]
    prompt_lens = [1, 37, 23]  # BOS only, a long prompt, a medium one
    width = max(prompt_lens)
    prompts = torch.full((3, width), pad)
    for b, (song, n) in enumerate(zip(songs, prompt_lens)):
        if padding == "right":
            prompts[b, :n] = song[:n]
        else:
            prompts[b, width - n:] = song[:n]
    refs = [full_logits(model, s) for s in songs]
    state = {}
    with torch.no_grad():
        out, _ = forward_incremental(model.decoder, prompts, state)  # (3, width, V)
        for b, n in enumerate(prompt_lens):
            # the last column is every row's next-token prediction; real columns match their positions
            assert torch.allclose(out[b, -1], refs[b][n - 1], atol=ATOL), f"row {b}: prefill prediction"
            cols = range(n) if padding == "right" else range(width - n, width)
            assert torch.allclose(out[b, list(cols)], refs[b][:n], atol=ATOL), f"row {b}: prefill positions"
        seq = prompts
        for step in range(60):  # every row now gets its own next token at every call
            col = torch.stack([s[n + step] for s, n in zip(songs, prompt_lens)])[:, None]
            seq = torch.cat([seq, col], dim=1)
            out, _ = forward_incremental(model.decoder, seq, state)
            for b, n in enumerate(prompt_lens):
                assert torch.allclose(out[b, -1], refs[b][n + step], atol=ATOL), f"row {b}, step {step}"


def test_reorder(task):
    """Beam-style reorder (duplicate, drop, swap rows) keeps each row's cache attached to its sequence."""
    model = make_model(task, impl="dense", seed=2)
    songs = [random_song(task, 80, seed=20 + i) for i in range(2)]
    refs = [full_logits(model, s) for s in songs]
    n0 = 30
    state = {}
    with torch.no_grad():
        forward_incremental(model.decoder, torch.stack([s[:n0] for s in songs]), state)
        order = torch.tensor([1, 0, 1])  # row 0 <- song 1, row 1 <- song 0, row 2 <- song 1
        reorder(model.decoder, state, order)
        rows = [songs[i] for i in order.tolist()]
        seq = torch.stack([s[:n0] for s in rows])
        for t in range(n0, 60):
            seq = torch.cat([seq, torch.stack([s[t] for s in rows])[:, None]], dim=1)
            out, _ = forward_incremental(model.decoder, seq, state)
            for b, i in enumerate(order.tolist()):
                assert torch.allclose(out[b, -1], refs[i][t], atol=ATOL), f"row {b} (song {i}), position {t}"
        reorder(model.decoder, state, torch.tensor([2]))  # finished rows removed: batch shrinks to 1
        seq = torch.cat([seq[2:], songs[1][60:61][None]], dim=1)
        out, _ = forward_incremental(model.decoder, seq, state)
        assert torch.allclose(out[0, -1], refs[1][60], atol=ATOL)


def test_sequence_generator_beam_search_matches_full_recompute(task):
    """fairseq's SequenceGenerator (beam 3, finished hypotheses removed, reorder every step) through the decoder's
    forward: the cached decoder gives the same hypotheses and scores as recomputing the whole prefix."""
    from fairseq.sequence_generator import SequenceGenerator

    model = make_model(task, impl="sparse", seed=4)
    d = task.dictionary
    prompts = [random_song(task, n, seed=30 + n)[1:] for n in (12, 5)]  # music tokens only (no BOS)
    prefix = torch.full((2, 11), d.pad())
    for b, p in enumerate(prompts):
        prefix[b, : p.numel()] = p
    sample = {"net_input": {"src_tokens": torch.full((2, 1), d.eos()), "src_lengths": torch.ones(2, dtype=torch.long)}}

    def generate():
        gen = SequenceGenerator([model], d, beam_size=3, max_len_b=40, min_len=1)
        return gen.generate([model], sample, prefix_tokens=prefix, bos_token=d.eos())

    cached = generate()
    dec = model.decoder

    def full_recompute(tokens, encoder_out=None, incremental_state=None, **kwargs):
        x, extra = dec.extract_features(tokens)
        return dec.output_layer(x[:, -1:]), extra

    dec.forward = full_recompute  # instance attribute: the reference ignores the cache
    try:
        ref = generate()
    finally:
        del dec.forward
    for hyps_c, hyps_r in zip(cached, ref):
        assert len(hyps_c) == len(hyps_r) == 3
        for hc, hr in zip(hyps_c, hyps_r):
            assert torch.equal(hc["tokens"], hr["tokens"])
            assert torch.allclose(hc["positional_scores"], hr["positional_scores"], atol=ATOL)


@pytest.mark.parametrize("scheme", ["museformer", "full"])
def test_prompt_prefill_equals_token_by_token(task, scheme, monkeypatch):
    """A 200-token prompt (40+ bars) prefilled in ONE full forward, then cached steps: the same logits as feeding
    every token through the cache one by one (prefill in mid-bar and right after a b-1)."""
    from museformer_plugin import incremental

    calls = []
    real_prefill = incremental._prefill
    monkeypatch.setattr(incremental, "_prefill", lambda *a: calls.append(1) or real_prefill(*a))
    model = make_model(task, impl="sparse", attention_scheme=scheme, seed=5)
    song = random_song(task, 300, seed=6)
    ref, _ = incremental_logits(model, song)
    assert not calls  # one token per call: no prefill
    bar_end = int(song[:200].eq(task.bar_token).nonzero().flatten()[-1])
    for n in (200, bar_end + 1):  # inside a bar / just after a bar's b-1
        state = {}
        with torch.no_grad():
            out, _ = forward_incremental(model.decoder, song[None, :n], state)
            steps = [forward_incremental(model.decoder, song[None, : t + 1], state)[0][0, -1] for t in range(n, 300)]
        assert calls, "a prompt in one call must go through the prefill"
        calls.clear()
        torch.testing.assert_close(out[0], ref[:n], atol=ATOL, rtol=0)
        torch.testing.assert_close(torch.stack(steps), ref[n:], atol=ATOL, rtol=0)


def test_lean_cache_stops_growing(task):
    """With the paper's scheme only the BOS, the last 32 bars and the summaries are kept: over 600 tokens of short
    bars (~150 bars) the stored positions stay within the last 33 bars and the store stops growing, while every
    logit still equals the full forward. ``full`` attention keeps every position."""
    from measure import stored_positions

    song = random_song(task, 600, seed=8)
    bar_end = song.eq(task.bar_token).nonzero().flatten().tolist()
    for scheme in ("museformer", "full"):
        model = make_model(task, impl="sparse", attention_scheme=scheme, seed=9)
        ref = full_logits(model, song)
        inc, state = incremental_logits(model, song)
        torch.testing.assert_close(inc, ref, atol=ATOL, rtol=0)
        cache = model.decoder.get_incremental_state(state, STATE_KEY)
        kept, cap = stored_positions(model.decoder, state)[0], cache["k0"].size(2)
        if scheme == "museformer":
            window = 600 - bar_end[-34]  # tokens of the last 33 bars (the current one and 32 before it)
            assert kept <= window + 1, (kept, window)
            assert cap <= 2 * (window + 1), f"store capacity {cap} for {window} needed positions"
        else:
            assert kept == 600 and cap >= 600
