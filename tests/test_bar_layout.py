"""bar_layout: scheme parsing, the bar selection of spec §2.3, the dense masks (§2.4), bar/beat ids, append, spans."""
import pytest
import torch

from needs import require_fairseq

require_fairseq()

from museformer_plugin.bar_layout import (  # noqa: E402
    MUSEFORMER_COARSE,
    MUSEFORMER_FINE,
    PAD_BAR,
    BarScheme,
    bar_spans,
    build_beat_lut,
    compute_beat_ids,
    dense_masks,
    next_bar_id,
    next_beat_id,
    parse_range_command,
)
from attention_data import layout_from_tokens  # noqa: E402

BOS, PAD, BAR, NOTE = 2, 1, 5, 7


def layout_of(songs):
    T = max(len(s) for s in songs)
    return layout_from_tokens(torch.tensor([s + [PAD] * (T - len(s)) for s in songs]), BAR, PAD)


def grid(text):
    """A mask written as rows of 'X' (attend) and '.' (masked); spaces are ignored."""
    rows = [r.replace(" ", "") for r in text.strip().splitlines()]
    return torch.tensor([[c == "X" for c in r] for r in rows])


@pytest.mark.parametrize("text,expected", [
    ("((((-2, 0), -4, -8, -12, -16, -24, -32),),)", MUSEFORMER_FINE),  # the training script's con2con
    ("((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3),),)", MUSEFORMER_COARSE),
    ("((-2, 0), -4, -8)", ((-2, 0), -4, -8)),  # a bare command
    ("((None,),)", None),  # sum2con / sum2sum: selects nothing
    ("None", None),
    ("-3", (-3,)),
    ("((((None, 0),),),)", ((None, 0),)),
])
def test_parse_original_syntax(text, expected):
    assert parse_range_command(text) == expected


@pytest.mark.parametrize("text", ["((1, 2, 3),)", "(((-1, 0),), ((-2, 0),))", "((-1, 0)", "(('a', 0),)"])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        parse_range_command(text)


# Spec §2.3 table: bar -> (fine bars, coarse bars), 1-based.
SPEC_TABLE = {
    1: ([], []),
    2: ([1], []),
    3: ([2, 1], []),
    4: ([3, 2], [1]),
    5: ([4, 3, 1], [2]),
    6: ([5, 4, 2], [1, 3]),
    9: ([8, 7, 5, 1], [2, 3, 4, 6]),
    13: ([12, 11, 9, 5, 1], [2, 3, 4, 6, 7, 8, 10]),
    40: ([39, 38, 36, 32, 28, 24, 16, 8], sorted(set(range(1, 40)) - {39, 38, 36, 32, 28, 24, 16, 8})),
}


@pytest.mark.parametrize("bar", sorted(SPEC_TABLE))
def test_spec_table(bar):
    fine, coarse = BarScheme.from_args("museformer").matrices(45)
    exp_fine, exp_coarse = SPEC_TABLE[bar]
    assert fine[bar].nonzero().flatten().tolist() == sorted(exp_fine)
    assert coarse[bar].nonzero().flatten().tolist() == sorted(exp_coarse)


@pytest.mark.parametrize("preset", ["museformer", "full", "recent8"])
def test_fine_and_coarse_partition_previous_bars(preset):
    """Every earlier bar is seen exactly once (tokens or summary); no own, later or prefix bar is ever selected."""
    fine, coarse = BarScheme.from_args(preset).matrices(70)
    assert not (fine & coarse).any()
    earlier = torch.ones(71, 71, dtype=torch.bool).tril(-1)
    earlier[:, 0] = False
    earlier[0, :] = False
    if preset == "full":
        assert torch.equal(fine, earlier) and not coarse.any()
    else:
        assert torch.equal(fine | coarse, earlier)


def test_no_coarse_preset_drops_summaries():
    fine, coarse = BarScheme.from_args("no-coarse").matrices(40)
    assert not coarse.any()
    assert torch.equal(fine, BarScheme.from_args("museformer").matrices(40)[0])


def test_override_fine_and_coarse():
    scheme = BarScheme.from_args("museformer", con2con="((-1, 0),)", con2sum="None")
    fine, coarse = scheme.matrices(5)
    assert fine[5].nonzero().flatten().tolist() == [4] and not coarse.any()
    with pytest.raises(ValueError):
        BarScheme.from_args("no-such-preset")


def test_hand_written_three_bars():
    """[BOS] a b-1 | c d b-1 | e (unfinished), fine = previous bar, coarse = everything older. Worked out by hand."""
    layout = layout_of([[BOS, NOTE, BAR, NOTE, NOTE, BAR, NOTE]])
    assert layout.bar_ids.tolist() == [[0, 1, 1, 2, 2, 2, 3]]
    assert layout.num_complete_bars.tolist() == [2]
    reg_mask, sum_mask = dense_masks(layout, BarScheme(fine=(-1,), coarse=((None, -1),)))
    #                  S1 S2  r0 r1 r2 r3 r4 r5 r6
    expected_reg = grid("""
                        .  .   X  .  .  .  .  .  .
                        .  .   X  X  .  .  .  .  .
                        .  .   X  X  X  .  .  .  .
                        .  .   X  X  X  X  .  .  .
                        .  .   X  X  X  X  X  .  .
                        .  .   X  X  X  X  X  X  .
                        X  .   X  .  .  X  X  X  X
                        """)
    expected_sum = grid("""
                        X  .   .  X  X  .  .  .  .
                        .  X   .  .  .  X  X  X  .
                        """)
    assert torch.equal(reg_mask[0], expected_reg)
    assert torch.equal(sum_mask[0], expected_sum)


def test_worked_example_spec_2_4():
    """Five complete 2-token bars with the paper's scheme: the combined mask of spec §2.4, rows r0..r10 in full."""
    layout = layout_of([[BOS] + [NOTE, BAR] * 5])
    reg_mask, sum_mask = dense_masks(layout, BarScheme.from_args("museformer"))
    #                  S1 S2 S3 S4 S5  r0 r1 r2 r3 r4 r5 r6 r7 r8 r9 r10
    expected_sum = grid("""
                        X  .  .  .  .   .  X  X  .  .  .  .  .  .  .  .
                        .  X  .  .  .   .  .  .  X  X  .  .  .  .  .  .
                        .  .  X  .  .   .  .  .  .  .  X  X  .  .  .  .
                        .  .  .  X  .   .  .  .  .  .  .  .  X  X  .  .
                        .  .  .  .  X   .  .  .  .  .  .  .  .  .  X  X
                        """)
    expected_reg = grid("""
                        .  .  .  .  .   X  .  .  .  .  .  .  .  .  .  .
                        .  .  .  .  .   X  X  .  .  .  .  .  .  .  .  .
                        .  .  .  .  .   X  X  X  .  .  .  .  .  .  .  .
                        .  .  .  .  .   X  X  X  X  .  .  .  .  .  .  .
                        .  .  .  .  .   X  X  X  X  X  .  .  .  .  .  .
                        .  .  .  .  .   X  X  X  X  X  X  .  .  .  .  .
                        .  .  .  .  .   X  X  X  X  X  X  X  .  .  .  .
                        X  .  .  .  .   X  .  .  X  X  X  X  X  .  .  .
                        X  .  .  .  .   X  .  .  X  X  X  X  X  X  .  .
                        .  X  .  .  .   X  X  X  .  .  X  X  X  X  X  .
                        .  X  .  .  .   X  X  X  .  .  X  X  X  X  X  X
                        """)
    assert torch.equal(sum_mask[0], expected_sum)
    assert torch.equal(reg_mask[0], expected_reg)


def test_bar_ids_with_padding():
    layout = layout_of([
        [BOS, NOTE, BAR, BAR, NOTE, NOTE],  # two complete bars (the second has 1 token) + an unfinished one
        [BOS, NOTE, BAR],
        [BOS],
    ])
    assert layout.bar_ids.tolist() == [
        [0, 1, 1, 2, 3, 3],
        [0, 1, 1, PAD_BAR, PAD_BAR, PAD_BAR],
        [0, PAD_BAR, PAD_BAR, PAD_BAR, PAD_BAR, PAD_BAR],
    ]
    assert layout.num_complete_bars.tolist() == [2, 1, 0]
    assert layout.num_bars == 3 and layout.num_summary_slots == 2
    assert layout.summary_valid().tolist() == [[True, True], [True, False], [False, False]]
    # Padding rows see only the BOS; padding keys are never seen; missing summaries are never seen.
    reg_mask, sum_mask = dense_masks(layout, BarScheme.from_args("full"))
    assert reg_mask[1, 3:].tolist() == [[False, False, True, False, False, False, False, False]] * 3
    assert not reg_mask[1, :, 2 + 3:].any()
    assert sum_mask[2].tolist() == [[True, False] + [False] * 6, [False, True] + [False] * 6]


def test_bar_token_as_bos_does_not_close_a_bar():
    layout = layout_from_tokens(torch.tensor([[BAR, NOTE, BAR]]), BAR, PAD)
    assert layout.bar_ids.tolist() == [[0, 1, 1]] and layout.num_complete_bars.tolist() == [1]


def test_beat_ids():
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "b-1", "o-0", "o-12", "t-30", "i-0", "p-60", "d-6", "v-20", "s-9"]
    sid = {s: i for i, s in enumerate(symbols)}
    lut = build_beat_lut(symbols)
    assert lut.tolist() == [0, 0, 0, 0, 0, 1, 13, 0, -1, -1, -1, -1, -1]
    song = "</s> t-30 o-0 i-0 p-60 d-6 v-20 o-12 p-60 d-6 v-20 b-1 t-30 i-0 o-0 p-60".split()
    beat = compute_beat_ids(torch.tensor([[sid[s] for s in song]]), lut)
    # b-1 / t- / specials -> 0 without resetting the running onset (i-0 after t-30 inherits 13, spec §3).
    assert beat.tolist() == [[0, 0, 1, 1, 1, 1, 1, 13, 13, 13, 13, 0, 0, 13, 1, 1]]
    lut_ts = build_beat_lut(symbols, beat_mask_ts=True)  # general-use data: s- is zeroed, t- inherits
    assert lut_ts[sid["s-9"]] == 0 and lut_ts[sid["t-30"]] == -1


def test_one_token_rules_equal_the_sequence_rules():
    """next_bar_id / next_beat_id (the cached decoder's ints) give compute_bar_ids / compute_beat_ids, token by
    token, on random songs of b-1, onsets, tokens that inherit the onset and tokens that zero it."""
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "b-1", "o-0", "o-3", "o-12", "t-30", "i-0", "p-60", "d-6"]
    lut = build_beat_lut(symbols)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        tokens = torch.cat([torch.tensor([2]), torch.randint(4, len(symbols), (60,), generator=gen)])[None]
        bars = layout_from_tokens(tokens, 4, 1).bar_ids[0].tolist()
        beats = compute_beat_ids(tokens, lut)[0].tolist()
        last_bar, closed, onset = 0, False, 2  # nothing seen: the BOS is no onset
        for pos, tok in enumerate(tokens[0].tolist()):
            assert next_bar_id(pos, last_bar, closed) == bars[pos], f"bar id at {pos}"
            assert next_beat_id(lut.tolist(), onset, tok) == beats[pos], f"beat id at {pos}"
            last_bar, closed = bars[pos], tok == 4 and pos > 0
            onset = tok if lut[tok] > 0 else onset


def test_bar_spans():
    layout = layout_of([[BOS, NOTE, BAR, BAR, NOTE, NOTE], [BOS, NOTE, BAR]])
    start, end = bar_spans(layout)
    assert start.tolist() == [[0, 1, 3, 4], [0, 1, 0, 0]]
    assert end.tolist() == [[1, 3, 4, 6], [1, 3, 0, 0]]


PAPER_FINE_OFFSETS = (1, 2, 4, 8, 12, 16, 24, 32)  # spec §2.3: the structure-related previous bars


def expected_preset(preset, bar):
    """(fine, coarse) bar lists of query ``bar`` for ``preset``, written from the definitions, not from the code."""
    previous = set(range(1, bar))
    if preset == "full":
        fine = previous
    elif preset == "recent8":
        fine = {j for j in previous if bar - j <= 8}
    else:  # museformer and no-coarse share the paper's fine bars
        fine = {bar - d for d in PAPER_FINE_OFFSETS if bar - d >= 1}
    coarse = set() if preset in ("full", "no-coarse") else previous - fine
    return sorted(fine), sorted(coarse)


@pytest.mark.parametrize("preset", ["museformer", "full", "recent8", "no-coarse"])
def test_preset_definitions(preset):
    """recent8: exactly the previous 8 bars fine, all older bars coarse; no-coarse: the paper's fine bars and no
    summaries; full: every previous bar fine. Checked row by row for 70 bars (past the 32-bar offset)."""
    fine, coarse = BarScheme.from_args(preset).matrices(70)
    for bar in range(71):
        exp_fine, exp_coarse = expected_preset(preset, bar)
        assert fine[bar].nonzero().flatten().tolist() == exp_fine, (preset, bar)
        assert coarse[bar].nonzero().flatten().tolist() == exp_coarse, (preset, bar)


def test_preset_definitions_distinguish_the_presets():
    """The expectations above are not all the same split: each preset differs from every other one somewhere."""
    rows = {p: [expected_preset(p, bar) for bar in range(71)] for p in ("museformer", "full", "recent8", "no-coarse")}
    names = sorted(rows)
    assert all(rows[a] != rows[b] for i, a in enumerate(names) for b in names[i + 1:])
    assert expected_preset("recent8", 20) == (list(range(12, 20)), list(range(1, 12)))
