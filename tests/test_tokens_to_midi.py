"""tokens -> MIDI: same-pitch overlaps are resolved by one explicit rule, and any token sequence decodes.

The expected scores and token sequences here are built by hand or by the small renderer below, never taken from
the encoder's own output (MidiTok-style).
"""
from __future__ import annotations

import io
from collections import Counter, defaultdict

import miditoolkit
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep import TokenizerConfig, decode_tokens, encode_midi
from data_prep.midi_io import read_midi
from data_prep.vocab import bar_length, build_vocab, duration_to_id, id_to_duration, id_to_velocity, ts_to_id

P = 12
TPP = 40  # ticks per position: 480 ticks per beat / 12 positions


def notes_of(midi: miditoolkit.MidiFile) -> list[tuple[int, bool, int, int, int, int]]:
    """(program, is_drum, pitch, start, end, velocity) of every note, sorted."""
    return sorted(
        (t.program, t.is_drum, n.pitch, n.start, n.end, n.velocity) for t in midi.instruments for n in t.notes
    )


def via_file(midi: miditoolkit.MidiFile, tmp_path, reader: str) -> miditoolkit.MidiFile:
    path = tmp_path / f"decoded-{reader}.mid"
    midi.dump(str(path))
    return read_midi(path, reader=reader)


# ---- hand-made overlaps ------------------------------------------------------------------------------------------
# Each case: tokens, the expected decoded notes (program, is_drum, pitch, start tick, end tick, velocity), the
# expected `resolved` counts and the tokens a re-encoding must give, all written out by hand.
#   d-6 = 6 positions, d-12 = 12, d-24 = 36 (group 2 starts at 36, width 4), d-3 = 3; v-20 -> 82, v-25 -> 102.
HAND_CASES = {
    "two_at_one_onset_longer_kept": (
        "s-9 t-35 o-0 i-0 p-60 d-12 v-20 p-60 d-6 v-25 b-1",
        [(0, False, 60, 0, 12 * TPP, 82)],
        Counter(same_onset=1),
        "s-9 t-35 o-0 i-0 p-60 d-12 v-20 b-1",
    ),
    "equal_length_at_one_onset_louder_kept_whatever_the_order": (
        "s-9 t-35 o-0 i-0 p-60 d-12 v-20 p-60 d-12 v-25 b-1",  # not the encoder's order (it sorts v-25 first)
        [(0, False, 60, 0, 12 * TPP, 102)],
        Counter(same_onset=1),
        "s-9 t-35 o-0 i-0 p-60 d-12 v-25 b-1",
    ),
    "earlier_note_ends_where_the_later_starts": (
        # p-60 from position 0 for 36 positions; another p-60 at 12 for 6: the first is cut to 12 positions
        "s-9 t-35 o-0 i-0 p-60 d-24 v-20 p-64 d-24 v-20 o-12 i-0 p-60 d-6 v-25 b-1",
        [(0, False, 60, 0, 12 * TPP, 82), (0, False, 60, 12 * TPP, 18 * TPP, 102),
         (0, False, 64, 0, 36 * TPP, 82)],
        Counter(shortened=1),
        "s-9 t-35 o-0 i-0 p-64 d-24 v-20 p-60 d-12 v-20 o-12 i-0 p-60 d-6 v-25 b-1",
    ),
    "across_a_bar_line_on_drums": (
        # drum 38 at position 36 for 36 positions, again at bar 2 position 0 (= 48): cut to 12 positions
        "s-9 t-35 o-36 i-128 p-166 d-24 v-20 b-1 s-9 t-35 o-0 i-128 p-166 d-3 v-20 b-1",
        [(0, True, 38, 36 * TPP, 48 * TPP, 82), (0, True, 38, 48 * TPP, 51 * TPP, 82)],
        Counter(shortened=1),
        "s-9 t-35 o-36 i-128 p-166 d-12 v-20 b-1 s-9 t-35 o-0 i-128 p-166 d-3 v-20 b-1",
    ),
    "three_in_a_row_and_a_duplicate": (
        # p-48 x2 at 0 (36 positions), at 6 (36), at 8 (d-3): one dropped, two shortened
        "s-9 t-35 o-0 i-33 p-48 d-24 v-20 p-48 d-24 v-20 o-6 i-33 p-48 d-24 v-20 o-8 i-33 p-48 d-3 v-20 b-1",
        [(33, False, 48, 0, 6 * TPP, 82), (33, False, 48, 6 * TPP, 8 * TPP, 82),
         (33, False, 48, 8 * TPP, 11 * TPP, 82)],
        Counter(same_onset=1, shortened=2),
        "s-9 t-35 o-0 i-33 p-48 d-6 v-20 o-6 i-33 p-48 d-2 v-20 o-8 i-33 p-48 d-3 v-20 b-1",
    ),
    "same_pitch_in_two_instruments_is_no_overlap": (
        "s-9 t-35 o-0 i-0 p-60 d-24 v-20 i-25 p-60 d-24 v-20 o-12 i-25 p-60 d-6 v-20 b-1",
        [(0, False, 60, 0, 36 * TPP, 82), (25, False, 60, 0, 12 * TPP, 82), (25, False, 60, 12 * TPP, 18 * TPP, 82)],
        Counter(shortened=1),
        "s-9 t-35 o-0 i-0 p-60 d-24 v-20 i-25 p-60 d-12 v-20 o-12 i-25 p-60 d-6 v-20 b-1",
    ),
    "touching_notes_are_not_overlaps": (
        "s-9 t-35 o-0 i-0 p-60 d-12 v-20 o-12 i-0 p-60 d-0 v-20 o-13 i-0 p-60 d-1 v-20 b-1",
        [(0, False, 60, 0, 12 * TPP, 82), (0, False, 60, 12 * TPP, 12 * TPP + TPP // 4, 82),
         (0, False, 60, 13 * TPP, 14 * TPP, 82)],
        Counter(),
        "s-9 t-35 o-0 i-0 p-60 d-12 v-20 o-12 i-0 p-60 d-0 v-20 o-13 i-0 p-60 d-1 v-20 b-1",
    ),
}


@pytest.mark.parametrize("case", list(HAND_CASES), ids=list(HAND_CASES))
def test_hand_made_overlaps(case, tmp_path):
    tokens, expected_notes, expected_resolved, expected_tokens = HAND_CASES[case]
    res = decode_tokens(tokens, strict=True)  # overlaps are not errors: strict decoding accepts them
    assert res.skipped == Counter()
    assert res.resolved == expected_resolved
    assert notes_of(res.midi) == expected_notes
    assert res.num_notes == len(expected_notes)
    assert encode_midi(res.midi) == expected_tokens.split()
    # the MIDI file holds exactly the decoded notes, whichever reader reads it back
    for reader in ("miditoolkit", "symusic") if _has_symusic() else ("miditoolkit",):
        back = via_file(res.midi, tmp_path, reader)
        assert notes_of(back) == expected_notes, reader
        assert encode_midi(back) == expected_tokens.split(), reader
    again = decode_tokens(expected_tokens)
    assert again.resolved == Counter() and notes_of(again.midi) == expected_notes


def _has_symusic() -> bool:
    import importlib.util

    return importlib.util.find_spec("symusic") is not None


def test_resolved_overlaps_are_reported_by_the_decode_cli(tmp_path, capsys):
    from data_prep.cli import main

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "a.mid.txt").write_text(HAND_CASES["three_in_a_row_and_a_duplicate"][0])
    assert main(["decode", str(tmp_path / "tok"), str(tmp_path / "mid")]) == 0
    out = capsys.readouterr().out
    assert "1 MIDI files written" in out and ", 3 notes" in out
    assert "overlaps resolved: 1 notes dropped" in out and "2 notes shortened" in out
    assert notes_of(miditoolkit.MidiFile(str(tmp_path / "mid" / "a.mid"))) == HAND_CASES[
        "three_in_a_row_and_a_duplicate"][1]


# ---- the round-trip property on random well-formed songs ---------------------------------------------------------
LMD6_ORDER = [80, 128, 32, 43, 25, 0, 48]  # the `6tracks_cst1` order (docs/tokenizer.md)
PROPERTY_CONFIGS = {
    "remigen2": TokenizerConfig(),
    "remigen": TokenizerConfig(encoding="remigen"),
    "lmd6_ignore_ts": TokenizerConfig(instruments="lmd6", ignore_ts=True),
}
TS_CHOICES = [(4, 4), (3, 4), (6, 8), (2, 4), (5, 8)]


@st.composite
def songs(draw, cfg: TokenizerConfig):
    """A song as bars of {onset: {instrument: [(pitch, duration id, velocity id)]}}, with few pitches, so that
    same-pitch overlaps are frequent. The last bar has a note (the encoder ends at the last note's bar)."""
    instruments = [0, 43, 128] if cfg.instruments == "lmd6" else [0, 33, 128]
    num_bars = draw(st.integers(1, 4))
    bars = []
    for b in range(num_bars):
        ts = (4, 4) if cfg.ignore_ts else draw(st.sampled_from(TS_CHOICES))
        length = bar_length(ts, P)
        onsets = draw(st.lists(st.integers(0, length - 1), unique=True, min_size=int(b == num_bars - 1),
                               max_size=4))
        tempo_bar = draw(st.integers(30, 40))
        notes = {}
        for onset in sorted(onsets):
            by_inst = {}
            for inst in draw(st.lists(st.sampled_from(instruments), unique=True, min_size=1, max_size=2)):
                pitches = [36, 38] if inst == 128 else [60, 62]
                by_inst[inst] = draw(st.lists(
                    st.tuples(st.sampled_from(pitches), st.integers(0, 8 * P - 1), st.integers(0, 31)),
                    min_size=1, max_size=3))
            notes[onset] = (draw(st.integers(30, 40)), by_inst)  # REMIGEN: a tempo per onset
        bars.append((ts, length, tempo_bar, notes))
    return bars


def render(song, cfg: TokenizerConfig) -> list[str]:
    """Token strings of a song in the encoder's canonical order, written from the token grammar of
    docs/tokenizer.md (not by the encoder)."""
    order = (lambda i: LMD6_ORDER.index(i)) if cfg.instruments == "lmd6" else (lambda i: i)
    out = []
    for ts, _, tempo_bar, notes in song:
        if not cfg.ignore_ts:
            out.append(f"s-{ts_to_id(ts)}")
        if cfg.encoding == "remigen2":
            out.append(f"t-{tempo_bar}")
        for onset, (tempo_onset, by_inst) in sorted(notes.items()):
            out.append(f"o-{onset}")
            if cfg.encoding == "remigen":
                out.append(f"t-{tempo_onset}")
            for inst in sorted(by_inst, key=order):
                out.append(f"i-{inst}")
                for pitch, dur, vel in sorted(by_inst[inst], reverse=True):
                    out += [f"p-{pitch + 128 if inst == 128 else pitch}", f"d-{dur}", f"v-{vel}"]
        out.append("b-1")
    return out


def resolve(song) -> tuple[list, Counter]:
    """The rule, applied to the song structure: per instrument and pitch, of the notes at one onset the longest
    (then loudest) is kept; a note still sounding at the next onset of its pitch is cut to end there."""
    counts = Counter()
    starts, pos = [], 0
    for _, length, _, _ in song:
        starts.append(pos)
        pos += length
    per_key = defaultdict(list)  # (inst, pitch) -> [(abs position, dur id, vel id, bar, onset)]
    for b, (_, _, _, notes) in enumerate(song):
        for onset, (_, by_inst) in notes.items():
            for inst, ns in by_inst.items():
                for pitch, dur, vel in ns:
                    per_key[(inst, pitch)].append((starts[b] + onset, dur, vel, b, onset))
    new = [(ts, length, tempo, {o: (t, defaultdict(list)) for o, (t, _) in notes.items()})
           for ts, length, tempo, notes in song]
    for (inst, pitch), ns in per_key.items():
        ns.sort(key=lambda n: (n[0], -n[1], -n[2]))  # longer ids are longer notes, higher ids louder ones
        kept = []
        for n in ns:
            if kept and kept[-1][0] == n[0]:
                counts["same_onset"] += 1
                continue
            kept.append(list(n))
        for a, nxt in zip(kept, kept[1:]):
            sounding = id_to_duration(a[1], P) if a[1] > 0 else 0.25  # d-0 sounds a quarter position
            if a[0] + sounding > nxt[0]:
                a[1] = duration_to_id(nxt[0] - a[0], P)
                counts["shortened"] += 1
        for pos_, dur, vel, b, onset in kept:
            new[b][3][onset][1][inst].append((pitch, dur, vel))
    return new, counts


@pytest.mark.parametrize("cfg_name", list(PROPERTY_CONFIGS), ids=list(PROPERTY_CONFIGS))
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_equals_tokens_with_overlaps_resolved(cfg_name, data):
    cfg = PROPERTY_CONFIGS[cfg_name]
    song = data.draw(songs(cfg))
    tokens = render(song, cfg)
    resolved_song, expected_counts = resolve(song)
    expected = render(resolved_song, cfg)

    res = decode_tokens(tokens, cfg, strict=True)
    assert res.resolved == expected_counts
    assert res.num_notes == sum(t.startswith("p-") for t in expected)
    assert encode_midi(res.midi, cfg) == expected
    buf = io.BytesIO()  # and through a MIDI file, as a user would
    res.midi.dump(file=buf)
    buf.seek(0)
    assert encode_midi(miditoolkit.MidiFile(file=buf), cfg) == expected
    # a second round trip is the identity
    res2 = decode_tokens(expected, cfg, strict=True)
    assert res2.resolved == Counter()
    assert encode_midi(res2.midi, cfg) == expected


# ---- decoder fuzzing: any token sequence decodes, for every config ------------------------------------------------
FUZZ_CONFIGS = {
    "remigen2": TokenizerConfig(),
    "remigen": TokenizerConfig(encoding="remigen"),
    "lmd6_paper": TokenizerConfig(instruments="lmd6", normalize_pitch=True, remove_empty_bars=True, ignore_ts=True),
    "remigen_ignore_ts": TokenizerConfig(encoding="remigen", ignore_ts=True),
    "p16": TokenizerConfig(positions_per_beat=16),
    "p5_remigen": TokenizerConfig(positions_per_beat=5, encoding="remigen"),
}
JUNK = ["</s>", "<s>", "<pad>", "<unk>", "b-0", "b-2", "o-999", "p-256", "d--1", "x-1", "", "hello", "v-", "-3",
        "s-254", "t-49", "i-129", "o-1.5", "p-0x10"]


def fuzz_tokens(cfg: TokenizerConfig):
    vocab = build_vocab(TokenizerConfig(positions_per_beat=cfg.positions_per_beat))  # every family, every value
    return st.lists(st.one_of(st.sampled_from(vocab), st.sampled_from(JUNK), st.text(max_size=6)), max_size=120)


@pytest.mark.parametrize("cfg_name", list(FUZZ_CONFIGS), ids=list(FUZZ_CONFIGS))
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_token_sequence_decodes(cfg_name, data):
    cfg = FUZZ_CONFIGS[cfg_name]
    tokens = data.draw(fuzz_tokens(cfg))
    res = decode_tokens(tokens, cfg)  # must not raise
    notes = [n for t in res.midi.instruments for n in t.notes]
    assert res.num_notes == len(notes)
    assert res.num_notes + sum(res.skipped.values()) + sum(res.resolved.values()) <= len(tokens) + 2
    assert all(n.end > n.start >= 0 and 0 <= n.pitch <= 127 and 0 < n.velocity <= 127 for n in notes)
    for t in res.midi.instruments:  # no two notes of one pitch sound at once
        last_end = {}
        for n in sorted(t.notes, key=lambda n: n.start):
            assert n.start >= last_end.get(n.pitch, 0)
            last_end[n.pitch] = n.end
    res.midi.dump(file=io.BytesIO())  # and the result is a writable MIDI file
    # a sequence spelled as one string decodes the same as its list (no token holds a space)
    if all(t and not any(c.isspace() for c in t) for t in tokens):
        assert notes_of(decode_tokens(" ".join(tokens), cfg).midi) == notes_of(res.midi)
