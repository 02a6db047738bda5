"""museformer-sample controls, default grammar mask, batched sampling, --dtype and --threads.

Every control is checked on the tokens of every sampled piece (and on the decoded MIDI), for both encodings; an
impossible control is one error line with exit status 2. Batched sampling is checked two ways: a batch of 4 gives
the same pieces as 4 batches of 1 (one generator per piece), and the decoder sees exactly the pieces still
running at each step (finished pieces leave the batch). The checkpoints are randomly initialised
``museformer_lm_tiny`` models (nothing is trained), so the pieces are random but must still obey every rule.
"""
import miditoolkit
import pytest
import torch
from needs import require_fairseq

require_fairseq()

from test_sample import TOK_CFG, make_checkpoint, make_data_dir, make_midi  # noqa: E402
from data_prep.config import TokenizerConfig  # noqa: E402
from data_prep.constants import TS_TO_ID  # noqa: E402
from data_prep.grammar import count_errors  # noqa: E402
from data_prep.midi_to_tokens import encode_midi  # noqa: E402
from data_prep.vocab import id_to_tempo, tempo_to_id  # noqa: E402
from museformer_tools.checkpoint import load_model  # noqa: E402
from museformer_tools.controls import Controls, family_graph, tokens_to_close  # noqa: E402
from museformer_tools.sample import build_parser, main  # noqa: E402
from museformer_tools.sampling import piece_generator, sample_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = {  # both write s- tokens and have every GM instrument
    "remigen2": TokenizerConfig(encoding="remigen2"),
    "remigen": TokenizerConfig(encoding="remigen"),
}


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    """encoding -> (data dir, checkpoint, config); plus "lmd6" (ignore_ts, six instruments) for impossible controls."""
    root = tmp_path_factory.mktemp("controls")
    out = {}
    for name, cfg in [*CONFIGS.items(), ("lmd6", TOK_CFG)]:
        data = make_data_dir(root / f"data-{name}", cfg)
        out[name] = (data, make_checkpoint(data, root / f"ckpt-{name}.pt"), cfg)
    out["prompt"] = make_midi(root / "prompt.mid", num_bars=3)  # 4/4, piano + drums
    out["eager"] = (out["remigen2"][0], eager_to_close_bars(out["remigen2"][1], root / "ckpt-eager.pt"),
                    CONFIGS["remigen2"])
    return out


def eager_to_close_bars(ckpt, path):
    """The checkpoint with a b-1 logit of about 3 +- 2 (other logits about 0 +- 1): a random model otherwise almost
    never closes a bar, and pieces that stop at --max-bars must end at different steps for the batching tests.
    The final LayerNorm gets a bias u and the b-1 row of the output projection points along u."""
    from fairseq import checkpoint_utils
    from data_prep.vocab import read_dict

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    weights = state["model"]
    bar = 4 + read_dict(ckpt.parent / "data-remigen2" / "dict.txt").index("b-1")  # fairseq's 4 specials first
    u = torch.randn(weights["decoder.final_norm.bias"].shape, generator=torch.Generator().manual_seed(0))
    u = 1.5 * u / u.norm()
    weights["decoder.final_norm.bias"] = u
    weights["decoder.output_projection.weight"][bar] = 2.0 * u / u.norm()
    checkpoint_utils.torch_persistent_save(state, str(path))
    return path


def sample(setup, out, *extra):
    data, ckpt, _ = setup
    rc = main([str(ckpt), "--data", str(data), "--out", str(out), "--threads", "1", *map(str, extra)])
    pieces = [p.read_text(encoding="utf-8").split() for p in sorted(out.glob("sample_*.txt"))]
    return rc, pieces


def split_bars(tokens):
    """Bars as token lists, each ending with its b-1 (a trailing unfinished bar is returned too)."""
    bars, cur = [], []
    for tok in tokens:
        cur.append(tok)
        if tok == "b-1":
            bars.append(cur)
            cur = []
    return bars + ([cur] if cur else [])


@pytest.mark.parametrize("encoding", list(CONFIGS))
def test_every_piece_obeys_every_control(setups, tmp_path, encoding):
    _, _, cfg = setups[encoding]
    instruments, ts, bpm, num_bars = {0, 25, 128}, (3, 4), 100.0, 3
    ts_tok, tempo_tok = f"s-{TS_TO_ID[ts]}", f"t-{tempo_to_id(bpm)}"
    rc, pieces = sample(setups[encoding], tmp_path, "--num-samples", 3, "--batch-size", 3, "--max-tokens", 150,
                        "--instruments", "0,25,128", "--time-signature", "3/4", "--tempo", bpm, "--bars", num_bars,
                        "--seed", 2)
    assert rc == 0 and len(pieces) == 3
    for tokens in pieces:
        assert count_errors(tokens, cfg) == 0
        bars = split_bars(tokens)
        assert len(bars) == num_bars and tokens[-1] == "b-1", "exactly --bars bars, the last one closed"
        assert {t for t in tokens if t.startswith("i-")} <= {f"i-{i}" for i in instruments}
        for bar in bars:
            assert bar[0] == ts_tok and [t for t in bar if t.startswith("s-")] == [ts_tok], bar[:4]
            tempos = [j for j, t in enumerate(bar) if t.startswith("t-")]
            assert all(bar[j] == tempo_tok for j in tempos)
            if encoding == "remigen2":
                assert tempos == [1], f"REMIGEN2: one t- right after the bar's s-: {bar[:4]}"
            else:
                onsets = [j for j, t in enumerate(bar) if t.startswith("o-")]
                assert tempos == [j + 1 for j in onsets], "REMIGEN: one t- right after every onset"
    assert any(t.startswith("p-") for tokens in pieces for t in tokens), "the pieces must have notes"
    for mid in sorted(tmp_path.glob("sample_*.mid")):  # the decoded MIDI carries the controls too
        midi = miditoolkit.MidiFile(str(mid))
        assert {(t.numerator, t.denominator) for t in midi.time_signature_changes} == {ts}
        assert {128 if i.is_drum else i.program for i in midi.instruments} <= instruments
        if encoding == "remigen2":  # (REMIGEN's first t- follows the first onset: the decoder puts 120 BPM before)
            assert {round(t.tempo, 3) for t in midi.tempo_changes} == {round(id_to_tempo(tempo_to_id(bpm)), 3)}


def test_controls_apply_after_the_prompt(setups, tmp_path):
    """The prompt (4/4, piano and drums) is kept as it is; the sampled bars follow the controls; --bars counts the
    prompt's bars."""
    _, _, cfg = setups["remigen2"]
    prompt = encode_midi(setups["prompt"], cfg)
    prompt = prompt[: prompt.index("b-1") + 1]  # its first bar
    rc, pieces = sample(setups["remigen2"], tmp_path, "--num-samples", 2, "--batch-size", 2, "--max-tokens", 120,
                        "--prompt-midi", setups["prompt"], "--prompt-bars", 1, "--bars", 3, "--time-signature", "6/8",
                        "--instruments", "33")
    assert rc == 0 and len(pieces) == 2
    for tokens in pieces:
        assert tokens[: len(prompt)] == prompt
        bars = split_bars(tokens[len(prompt):])
        assert len(bars) == 2 and tokens[-1] == "b-1"
        assert all(bar[0] == f"s-{TS_TO_ID[(6, 8)]}" for bar in bars)
        assert {t for t in tokens[len(prompt):] if t.startswith("i-")} <= {"i-33"}


def test_bars_fit_a_tight_token_limit(setups, tmp_path):
    """With exactly the tokens N empty bars need, each bar must be `s- t- b-1`; with a few more, still N bars."""
    ts_tok, tempo_tok = f"s-{TS_TO_ID[(4, 4)]}", f"t-{tempo_to_id(120)}"
    controls = ("--time-signature", "4/4", "--tempo", 120, "--bars", 4)
    rc, pieces = sample(setups["remigen2"], tmp_path / "exact", "--num-samples", 2, "--max-tokens", 12, *controls)
    assert rc == 0 and pieces == [[ts_tok, tempo_tok, "b-1"] * 4] * 2
    rc, pieces = sample(setups["remigen2"], tmp_path / "tight", "--num-samples", 4, "--batch-size", 4,
                        "--max-tokens", 24, *controls, "--seed", 3)
    assert rc == 0 and len(pieces) == 4
    for tokens in pieces:
        assert tokens.count("b-1") == 4 and tokens[-1] == "b-1" and len(tokens) <= 24
        assert count_errors(tokens, CONFIGS["remigen2"]) == 0
    assert any(len(tokens) > 12 for tokens in pieces), "with room to spare some bar must hold more than s- t- b-1"


def test_shortest_bar_completion_worked_out_by_hand():
    both = Controls(time_signature=(3, 4), tempo_id=30)
    close = tokens_to_close(family_graph(CONFIGS["remigen2"], both))
    # REMIGEN2 bar under both controls: s t (o i (p d v)+)* b
    assert close["b"] == 3 and close["^"] == 3  # s t b
    assert close["s"] == 2 and close["t"] == 1  # t b | b
    assert close["o"] == 5 and close["i"] == 4 and close["v"] == 1  # i p d v b | p d v b | b
    close = tokens_to_close(family_graph(CONFIGS["remigen"], Controls(tempo_id=30)))
    # REMIGEN bar under the tempo control: [s] (o t i (p d v)+)* b
    assert close["b"] == 1 and close["o"] == 6 and close["t"] == 5  # b | t i p d v b | i p d v b
    assert close["b"] == tokens_to_close(family_graph(TOK_CFG, Controls()))["b"] == 1  # no control: b-1 alone


def test_impossible_controls_are_one_line_errors(setups, tmp_path, capsys):
    lmd6 = setups["lmd6"]
    cases = {
        "instrument not in the dictionary": (lmd6, ["--instruments", "0,25,33,128"], "i-33 is not in the vocabulary"),
        "instruments not numbers": (lmd6, ["--instruments", "piano"], "--instruments expects"),
        "time signature without s- tokens": (lmd6, ["--time-signature", "3/4"], "ignore_ts"),
        "time signature not in the table": (setups["remigen2"], ["--time-signature", "3/5"], "power of two"),
        "time signature not a fraction": (setups["remigen2"], ["--time-signature", "waltz"], "NUM/DEN"),
        "tempo too fast": (setups["remigen2"], ["--tempo", 300], "16 to 256 BPM"),
        "tempo not positive": (setups["remigen2"], ["--tempo", 0], "positive"),
        "bars and max-bars": (setups["remigen2"], ["--bars", 4, "--max-bars", 8], "exclude each other"),
        "bars and min-tokens": (setups["remigen2"], ["--bars", 4, "--min-tokens", 100], "--min-tokens"),
        "control without grammar mask": (setups["remigen2"], ["--tempo", 120, "--no-grammar-mask"],
                                         "drop --no-grammar-mask"),
        # an empty bar under --time-signature is `s- b-1`: 11 bars need 22 tokens
        "bars do not fit": (setups["remigen2"], ["--bars", 11, "--time-signature", "4/4", "--max-tokens", 20],
                            "needs at least 22 tokens"),
        "prompt has the bars": (setups["remigen2"], ["--bars", 2, "--prompt-midi", setups["prompt"],
                                                     "--prompt-bars", 3], "already has 3 bars"),
        "zero threads": (setups["remigen2"], ["--threads", 0], "--threads"),
    }
    for name, (setup, extra, expected) in cases.items():
        data, ckpt, _ = setup
        rc = main([str(ckpt), "--data", str(data), "--out", str(tmp_path / "out"), *map(str, extra)])
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.startswith("museformer-sample: error:")]
        assert rc == 2, f"{name}: exit status {rc}"
        assert len(lines) == 1 and expected in lines[0], f"{name}: {captured.err!r}"
        assert "Traceback" not in captured.err and not captured.out, name
    assert not list(tmp_path.glob("out/*")), "nothing may be written"


def test_grammar_mask_is_the_default(setups, tmp_path, capsys):
    common = ("--num-samples", 2, "--batch-size", 2, "--max-tokens", 60, "--seed", 4)
    rc, masked = sample(setups["remigen2"], tmp_path / "masked", *common)
    assert rc == 0 and all(count_errors(t, CONFIGS["remigen2"]) == 0 for t in masked)
    rc, raw = sample(setups["remigen2"], tmp_path / "raw", *common, "--no-grammar-mask")
    assert rc == 0 and sum(count_errors(t, CONFIGS["remigen2"]) for t in raw) > 0, "raw sampling is not masked"
    out = capsys.readouterr().out
    assert "\ngrammar mask;" in out and "\nno grammar mask;" in out
    helptext = build_parser().format_help()
    assert "--no-grammar-mask" in helptext and "on by default" in helptext


def test_batch_of_four_equals_four_batches_of_one(setups, tmp_path):
    """One generator per piece: batching changes the speed, not the pieces (pieces end at different steps)."""
    common = ("--num-samples", 4, "--max-tokens", 70, "--max-bars", 2, "--seed", 7)
    rc1, single = sample(setups["eager"], tmp_path / "b1", *common, "--batch-size", 1)
    rc4, batched = sample(setups["eager"], tmp_path / "b4", *common, "--batch-size", 4)
    assert rc1 == rc4 == 0 and len(single) == 4
    assert batched == single
    assert len({len(t) for t in single}) > 1, "pieces of different lengths, so rows leave the batch mid-way"


def test_finished_pieces_leave_the_batch(setups):
    """The decoder runs exactly the pieces that are still going: rows per call = unfinished pieces."""
    data, ckpt, cfg = setups["eager"]
    model, task = load_model(str(ckpt), str(data))
    args = build_parser().parse_args([str(ckpt), "--data", str(data), "--out", "unused", "--max-tokens", "60",
                                      "--max-bars", "2"])
    from museformer_tools.grammar_mask import GrammarMask

    dec = model.decoder
    rows, orders = [], []
    forward, reorder = dec.forward, dec.reorder_incremental_state

    def spy_forward(tokens, *a, **kw):
        rows.append(tokens.size(0))
        return forward(tokens, *a, **kw)

    def spy_reorder(state, order):
        orders.append(order.tolist())
        return reorder(state, order)

    dec.forward, dec.reorder_incremental_state = spy_forward, spy_reorder
    gens = [piece_generator(5, k) for k in range(8)]
    grammar = GrammarMask(task.dictionary.symbols, task.dictionary.eos(), cfg)
    pieces = sample_batch(model, task, [], gens, args, grammar)
    bar = task.dictionary.index("b-1")
    # calls a piece took part in: one per sampled token, plus the draw of </s> when it ended on its own
    calls = [len(p) + (len(p) < args.max_length and p.count(bar) < args.max_bars) for p in pieces]
    assert rows == [sum(c > step for c in calls) for step in range(max(calls))]
    assert rows[0] == 8 and rows[-1] < 8 and len(orders) >= 2, (rows, orders)
    assert sum(rows) < 8 * len(rows), "batch-8 work must shrink as pieces finish"
    assert all(order == sorted(order) and len(order) < 8 for order in orders)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_on_cpu(setups, tmp_path, capsys, monkeypatch, dtype):
    """--dtype casts the model (fp16 runs on CPU too) and the pieces are still well-formed."""
    import museformer_tools.sample as sample_mod

    seen, original = [], sample_mod.sample_batch

    def spy(model, *a, **kw):
        seen.append({p.dtype for p in model.parameters()})
        return original(model, *a, **kw)

    monkeypatch.setattr(sample_mod, "sample_batch", spy)
    rc, pieces = sample(setups["remigen2"], tmp_path, "--num-samples", 2, "--batch-size", 2, "--max-tokens", 40,
                        "--dtype", dtype, "--bars", 2)
    assert rc == 0 and len(pieces) == 2
    assert all(count_errors(t, CONFIGS["remigen2"]) == 0 and t.count("b-1") == 2 for t in pieces)
    assert f"{dtype}, 1 thread)" in capsys.readouterr().out
    assert seen == [{sample_mod.DTYPES[dtype]}], "every parameter must be cast"


def test_threads_flag_is_applied_and_restored(setups, tmp_path, capsys):
    before = torch.get_num_threads()  # 1 (fixture)
    rc, _ = sample(setups["remigen2"], tmp_path, "--max-tokens", 10, "--threads", 2)  # the last --threads wins
    assert rc == 0 and "fp32, 2 threads" in capsys.readouterr().out
    assert torch.get_num_threads() == before, "main() must give the caller its thread count back"
    assert build_parser().parse_args(["c", "--data", "d", "--out", "o"]).threads is None  # None = all cores
