"""MIDI <-> REMIGEN2/REMIGEN: hand-computed cases, quantisation edges, round trips, options and bad input."""
from __future__ import annotations

import io
from collections import Counter, defaultdict
from pathlib import Path

import miditoolkit
import pytest

from data_prep import DecodeResult, MidiEncodeError, TokenizerConfig, count_errors, decode_tokens, encode_midi
from data_prep.instruments import instrument_id
from data_prep.midi_to_tokens import quantize, tick_to_pos
from data_prep.tokens_to_midi import decode_ticks_per_beat
from data_prep.vocab import (
    bar_length,
    duration_to_id,
    id_to_duration,
    id_to_tempo,
    id_to_velocity,
    reduce_time_signature,
    tempo_to_id,
    ts_to_id,
    velocity_to_id,
)
from midi_factory import make_midi, make_song

# ---- a 2-bar song worked out by hand (tpb 480, P = 12 -> 40 ticks per position) -------------------------------
#   120 BPM -> t-35 (12 * log2(7.5) = 34.9); 60 BPM from tick 2880 (mid bar 2) -> t-23 (12 * log2(3.75) = 22.9)
#   durations: 6 pos -> d-6; 12 -> d-12; 24 -> 12 + (24-12)//2 = d-18; 96 -> 36 + (96-84)//8 = d-37; 3 -> d-3
#   velocities: 80, 81 -> v-20; 100 -> v-25; 90 -> v-22; 64 -> v-16. Drum pitch 36 -> p-164. 4/4 -> s-9.
HAND_TRACKS = [
    (0, False, [(0, 480, 60, 80), (0, 240, 64, 81), (2400, 6240, 67, 64), (3360, 3840, 72, 100)]),
    (33, False, [(960, 1920, 40, 90)]),
    (0, True, [(0, 120, 36, 100)]),
]
HAND_TEMPOS = [(0, 120.0), (2880, 60.0)]
HAND_REMIGEN2 = (
    "s-9 t-35 o-0 i-0 p-64 d-6 v-20 p-60 d-12 v-20 i-128 p-164 d-3 v-25 o-24 i-33 p-40 d-18 v-22 b-1 "
    "s-9 t-35 o-12 i-0 p-67 d-37 v-16 o-36 i-0 p-72 d-12 v-25 b-1"
)
HAND_REMIGEN = (
    "s-9 o-0 t-35 i-0 p-64 d-6 v-20 p-60 d-12 v-20 i-128 p-164 d-3 v-25 o-24 t-35 i-33 p-40 d-18 v-22 b-1 "
    "s-9 o-12 t-35 i-0 p-67 d-37 v-16 o-36 t-23 i-0 p-72 d-12 v-25 b-1"
)
# lmd6: program 33 -> bass 43; order lead, drums, bass, guitar, piano, strings; no s- tokens
HAND_LMD6 = (
    "t-35 o-0 i-128 p-164 d-3 v-25 i-0 p-64 d-6 v-20 p-60 d-12 v-20 o-24 i-43 p-40 d-18 v-22 b-1 "
    "t-35 o-12 i-0 p-67 d-37 v-16 o-36 i-0 p-72 d-12 v-25 b-1"
)


@pytest.mark.parametrize(
    "cfg,expected",
    [
        (TokenizerConfig(), HAND_REMIGEN2),
        (TokenizerConfig(encoding="remigen"), HAND_REMIGEN),
        (TokenizerConfig(instruments="lmd6", ignore_ts=True), HAND_LMD6),
    ],
    ids=["remigen2", "remigen", "lmd6_ignore_ts"],
)
def test_hand_computed_two_bar_song(tmp_path, cfg, expected):
    midi = make_midi(tmp_path / "hand.mid", HAND_TRACKS, tempos=HAND_TEMPOS)
    assert " ".join(encode_midi(midi, cfg)) == expected
    assert " ".join(encode_midi(tmp_path / "hand.mid", cfg)) == expected  # through a file too


def test_hand_song_decodes_to_expected_notes():
    res = decode_tokens(HAND_REMIGEN2)
    assert res.skipped == Counter() and res.num_notes == 6
    tracks = {(t.program, t.is_drum): t for t in res.midi.instruments}
    assert set(tracks) == {(0, False), (33, False), (0, True)}
    piano = sorted((n.start, n.end, n.pitch, n.velocity) for n in tracks[(0, False)].notes)
    # 40 ticks per position; durations decode to their bin's lower edge (96 -> bin [92, 100) -> 92 positions)
    assert piano == [(0, 240, 64, 82), (0, 480, 60, 82), (2400, 2400 + 92 * 40, 67, 66), (3360, 3840, 72, 102)]
    assert [(round(t.tempo, 3), t.time) for t in res.midi.tempo_changes] == [(round(id_to_tempo(35), 3), 0)]
    assert [(t.numerator, t.denominator, t.time) for t in res.midi.time_signature_changes] == [(4, 4, 0)]


# ---- quantisation at its edges ----------------------------------------------------------------------------------


def test_tick_to_pos_rounds_half_to_even_like_the_original():
    assert tick_to_pos(20, 480, 12) == 0  # 0.5 -> 0
    assert tick_to_pos(60, 480, 12) == 2  # 1.5 -> 2
    assert tick_to_pos(21, 480, 12) == 1
    assert tick_to_pos(1000, 96, 12) == 125


def test_tempo_ids():
    assert tempo_to_id(1.0) == 0 and tempo_to_id(16) == 0
    assert tempo_to_id(1000.0) == 48 and tempo_to_id(256) == 48
    assert tempo_to_id(140) == 38 and tempo_to_id(120) == 35  # spec §1.2 example: 140 BPM -> t-38
    assert abs(id_to_tempo(38) - 143.7) < 0.05
    assert all(tempo_to_id(id_to_tempo(k)) == k for k in range(49))


def test_velocity_ids():
    assert [velocity_to_id(v) for v in (0, 3, 4, 127)] == [0, 0, 1, 31]
    assert id_to_velocity(0) == 2 and id_to_velocity(31) == 126
    assert all(velocity_to_id(id_to_velocity(k)) == k for k in range(32))


@pytest.mark.parametrize("P", [12, 16])
def test_duration_ids(P):
    assert duration_to_id(0, P) == 0 and duration_to_id(-3, P) == 0
    assert duration_to_id(P - 1, P) == P - 1 and duration_to_id(P, P) == P and duration_to_id(P + 1, P) == P
    assert duration_to_id(P + 2, P) == P + 1
    assert duration_to_id(3 * P, P) == 2 * P  # group 2 starts at 3P
    last_edge = id_to_duration(8 * P - 1, P)
    assert last_edge == (2**7 - 1) * P + (P - 1) * 2**7  # 2932 at P=12
    assert duration_to_id(last_edge, P) == 8 * P - 1 and duration_to_id(10**6, P) == 8 * P - 1
    assert all(duration_to_id(id_to_duration(k, P), P) == k for k in range(8 * P))


def test_time_signature_reduction_and_ids():
    assert ts_to_id((4, 4)) == 9 and ts_to_id((3, 4)) == 8 and ts_to_id((1, 1)) == 0 and ts_to_id((128, 64)) == 253
    assert reduce_time_signature(9, 4) == (3, 4)  # 9 > 2*4: divide by 3
    assert reduce_time_signature(12, 128) == (6, 64)
    assert reduce_time_signature(6, 8) == (6, 8)
    assert reduce_time_signature(3, 128) == (2, 64)  # not reducible by halving: snapped (ours)
    assert bar_length((4, 4), 12) == 48 and bar_length((6, 8), 12) == 36 and bar_length((1, 16), 12) == 3
    assert bar_length((1, 64), 12) == 1  # 48 // 64 = 0 in the original (which then fails); at least 1 here


# ---- round trips ---------------------------------------------------------------------------------------------

TPB = 480
LOG_DIR = Path(__file__).parent / "logs"


def _ts_song():
    """3/4 -> 6/8 -> 4/4 with a mid-bar TS change (applies at the next bar), a 1/8 pickup bar as music21 writes."""
    notes = [(i * 240, i * 240 + 200, 60 + i % 12, 64 + i % 40) for i in range(60)]
    return make_midi(
        None,
        [(40, False, notes), (0, True, [(i * 480, i * 480 + 60, 38, 90) for i in range(30)])],
        tempos=[(0, 90.0), (2000, 150.0), (7000, 70.0)],
        time_signatures=[(0, 1, 8), (240, 3, 4), (1680, 6, 8), (3000, 4, 4), (5000, 2, 4)],
        ticks_per_beat=TPB,
    )


def _edge_song():
    """Long (clamped) and zero-length notes, duplicated notes, empty bars inside and before the music."""
    bar = 4 * TPB
    notes = [
        (2 * bar, 2 * bar + 200 * bar, 50, 100),  # 200 bars long: clamps to the last d- id
        (2 * bar + 10, 2 * bar + 12, 62, 1),  # 2 ticks: zero length on the grid
        (2 * bar + TPB, 2 * bar + TPB, 64, 127),  # zero ticks
        (2 * bar + TPB, 2 * bar + 2 * TPB, 64, 127),  # duplicates are kept
        (2 * bar + TPB, 2 * bar + 2 * TPB, 64, 127),
        (6 * bar + 7, 6 * bar + 500, 0, 0),  # pitch 0, velocity 0
        (6 * bar + 30, 6 * bar + 500, 127, 126),
    ]
    return make_midi(None, [(5, False, notes), (119, False, [(9 * bar, 9 * bar + 1, 70, 50)])], ticks_per_beat=TPB)


SONGS = {
    "multitrack": lambda: make_song(12, seed=1),
    "tempo_changes": lambda: make_song(9, seed=2, tempos=[(0, 80.0), (3000, 200.0), (9000, 40.0), (9001, 300.0)]),
    "ts_changes": _ts_song,
    "edge_notes": _edge_song,
    "tpb_96": lambda: make_song(5, seed=3, ticks_per_beat=96),
}

CONFIGS = {
    "remigen2": TokenizerConfig(),
    "remigen": TokenizerConfig(encoding="remigen"),
    "remigen2_lmd6_norm_trim_nots": TokenizerConfig(
        instruments="lmd6", normalize_pitch=True, remove_empty_bars=True, ignore_ts=True
    ),
    "remigen_trim_nots": TokenizerConfig(encoding="remigen", remove_empty_bars=True, ignore_ts=True),
    "remigen_trim": TokenizerConfig(encoding="remigen", remove_empty_bars=True),
    "remigen2_P16_dv": TokenizerConfig(positions_per_beat=16, normalize_pitch=True, pitch_weighting="duration_velocity"),
    "remigen2_P5": TokenizerConfig(positions_per_beat=5),
}


def reference_notes(midi: miditoolkit.MidiFile, cfg: TokenizerConfig) -> Counter:
    """The quantised reference: (onset, instrument, pitch, duration id, velocity id) of every note."""
    score = quantize(midi, cfg)
    P = cfg.positions_per_beat
    return Counter(
        (onset, inst, p, duration_to_id(d, P), velocity_to_id(v))
        for onset, by_inst in score.notes.items()
        for inst, notes in by_inst.items()
        for p, d, v in notes
    )


def decoded_notes(res: DecodeResult, cfg: TokenizerConfig) -> Counter:
    P = cfg.positions_per_beat
    tpp = res.midi.ticks_per_beat // P
    out = Counter()
    for t in res.midi.instruments:
        inst = 128 if t.is_drum else t.program
        for n in t.notes:
            assert n.start % tpp == 0, f"onset {n.start} is off the grid ({tpp} ticks per position)"
            out[(n.start // tpp, inst, n.pitch, duration_to_id(round((n.end - n.start) / tpp), P),
                 velocity_to_id(n.velocity))] += 1
    return out


def resolve_reference(ref: Counter, P: int) -> Counter:
    """The decoder's overlap rule applied to a quantised reference (written here, not taken from the decoder):
    per instrument and pitch, of the notes at one onset the longest (then loudest) stays; a note still sounding
    at the next onset of its pitch ends there. Duration and velocity ids order like the values they stand for."""
    per_key = defaultdict(list)
    for (onset, inst, pitch, dur, vel), k in ref.items():
        per_key[(inst, pitch)] += [[onset, dur, vel]] * k
    out = Counter()
    for (inst, pitch), notes in per_key.items():
        notes.sort(key=lambda n: (n[0], -n[1], -n[2]))
        kept = [list(n) for j, n in enumerate(notes) if j == 0 or notes[j - 1][0] != n[0]]
        for a, b in zip(kept, kept[1:]):
            if a[1] > 0 and a[0] + id_to_duration(a[1], P) > b[0]:  # d-0 sounds a quarter position only
                a[1] = duration_to_id(b[0] - a[0], P)
        out.update((onset, inst, pitch, dur, vel) for onset, dur, vel in kept)
    return out


@pytest.mark.parametrize("song", list(SONGS), ids=list(SONGS))
@pytest.mark.parametrize("cfg_name", list(CONFIGS), ids=list(CONFIGS))
def test_round_trip(song, cfg_name):
    cfg = CONFIGS[cfg_name]
    midi = SONGS[song]()
    tokens = encode_midi(midi, cfg)
    assert count_errors(tokens, cfg) == 0
    res = decode_tokens(tokens, cfg, strict=True)
    assert res.skipped == Counter()
    again = encode_midi(res.midi, cfg)
    # identical, unless the decoder resolved same-pitch overlaps (docs/tokenizer.md, "Decoding"); then the
    # second round trip is the identity
    if (again != tokens) != bool(res.resolved) or encode_midi(decode_tokens(again, cfg).midi, cfg) != again:
        LOG_DIR.mkdir(parents=True, exist_ok=True)  # keep both files to listen to (tests/logs/ is git-ignored)
        midi.dump(str(LOG_DIR / f"{song}-{cfg_name}-input.mid"))
        res.midi.dump(str(LOG_DIR / f"{song}-{cfg_name}-decoded.mid"))
    if not res.resolved:
        assert again == tokens
    assert decode_tokens(again, cfg).resolved == Counter()
    assert encode_midi(decode_tokens(again, cfg).midi, cfg) == again
    assert res.num_notes == sum(t.startswith("p-") for t in tokens) - res.resolved["same_onset"]
    if not cfg.normalize_pitch and not cfg.remove_empty_bars and cfg.instruments == "general":
        assert decoded_notes(res, cfg) == resolve_reference(reference_notes(midi, cfg), cfg.positions_per_beat)


def test_edge_song_duplicates_are_resolved():
    # pitch 64 at one onset: a zero-length note and two equal one-beat notes -> one one-beat note stays
    res = decode_tokens(encode_midi(_edge_song()), strict=True)
    assert res.resolved == Counter(same_onset=2)
    assert [(n.start, n.end) for t in res.midi.instruments for n in t.notes if n.pitch == 64] == [(4320, 4800)]


def test_round_trip_through_a_file(tmp_path):
    midi = make_song(6, seed=4)
    tokens = encode_midi(midi)
    res = decode_tokens(tokens)
    res.midi.dump(str(tmp_path / "out.mid"))
    assert encode_midi(tmp_path / "out.mid") == tokens


def test_every_token_family_appears_in_round_trip_songs():
    seen = set()
    for song in SONGS.values():
        seen |= {t.split("-")[0] for t in encode_midi(song())}
    assert seen == set("bsotipdv")


def test_round_trip_music21_corpus(tmp_path):
    music21 = pytest.importorskip("music21")
    path = tmp_path / "bwv66.6.mid"
    music21.corpus.parse("bach/bwv66.6").write("midi", fp=str(path))
    for cfg in (TokenizerConfig(), TokenizerConfig(encoding="remigen", remove_empty_bars=True)):
        tokens = encode_midi(path, cfg)
        assert sum(t.startswith("p-") for t in tokens) > 100
        res = decode_tokens(tokens, cfg, strict=True)
        # the four voices share program 0, so unisons are same-pitch overlaps in one track
        assert res.resolved["same_onset"] > 0
        again = encode_midi(res.midi, cfg)
        assert len(again) == len(tokens) - 3 * res.resolved["same_onset"]
        assert encode_midi(decode_tokens(again, cfg).midi, cfg) == again
        if not cfg.remove_empty_bars:
            reference = reference_notes(miditoolkit.MidiFile(str(path)), cfg)
            assert decoded_notes(res, cfg) == resolve_reference(reference, cfg.positions_per_beat)


def test_zero_length_note_decodes_short_and_re_encodes_to_d0():
    res = decode_tokens("t-35 o-0 i-0 p-60 d-0 v-20 b-1")
    (note,) = res.midi.instruments[0].notes
    tpp = decode_ticks_per_beat(12) // 12
    assert 0 < note.end - note.start < tpp / 2
    assert encode_midi(res.midi, TokenizerConfig(ignore_ts=True)) == "t-35 o-0 i-0 p-60 d-0 v-20 b-1".split()


# ---- options ---------------------------------------------------------------------------------------------------


def test_mid_bar_tempo_change_waits_for_next_bar_in_remigen2():
    midi = make_midi(None, [(0, False, [(0, 480, 60, 80), (1440, 1920, 62, 80), (1920, 2400, 64, 80)])],
                     tempos=[(0, 120.0), (960, 60.0)])
    assert [t for t in encode_midi(midi) if t.startswith("t-")] == ["t-35", "t-23"]
    assert [t for t in encode_midi(midi, TokenizerConfig(encoding="remigen")) if t.startswith("t-")] == [
        "t-35", "t-23", "t-23"]


def test_remove_empty_bars_trims_leading_bars_and_keeps_inner_ones():
    bar = 1920
    midi = make_midi(None, [(0, False, [(2 * bar, 2 * bar + 480, 60, 80), (5 * bar, 5 * bar + 480, 62, 80)])])
    full = encode_midi(midi)
    assert full.count("b-1") == 6
    trimmed = encode_midi(midi, TokenizerConfig(remove_empty_bars=True))
    assert trimmed == full[2 * 3:]  # two leading "s-9 t-35 b-1" bars removed
    assert "s-9 t-35 b-1" in " ".join(trimmed)  # inner empty bars stay
    nots = encode_midi(midi, TokenizerConfig(encoding="remigen", remove_empty_bars=True, ignore_ts=True))
    assert nots[0] == "o-0" and nots[:2] == ["o-0", "t-35"]


def test_ignore_ts_writes_no_s_tokens_but_keeps_bar_lengths():
    midi = make_midi(None, [(0, False, [(i * 480, i * 480 + 480, 60, 80) for i in range(6)])],
                     time_signatures=[(0, 3, 4)])
    toks = encode_midi(midi, TokenizerConfig(ignore_ts=True))
    assert not any(t.startswith("s-") for t in toks)
    assert toks.count("b-1") == 2 and "o-24" in toks and "o-36" not in toks  # 3/4 bars of 36 positions


@pytest.mark.parametrize(
    "program,is_drum,expected",
    [(0, False, 0), (4, False, 0), (10, False, 0), (19, False, 0), (24, False, 25), (30, False, 25),
     (32, False, 32), (33, False, 43), (43, False, 43), (40, False, 48), (49, False, 48), (56, False, 80),
     (65, False, 80), (73, False, 80), (81, False, 80), (89, False, 48), (105, False, 25), (118, False, 0),
     (127, False, 0), (30, True, 128)],
)
def test_lmd6_program_mapping(program, is_drum, expected):
    assert instrument_id(program, is_drum, "lmd6") == expected
    assert instrument_id(program, is_drum, "general") == (128 if is_drum else program)


def test_lmd6_encodes_any_program_and_orders_tracks():
    notes = [(0, 480, 60, 80)]
    midi = make_midi(None, [(p, False, notes) for p in (0, 30, 48, 81, 36)] + [(0, True, [(0, 100, 36, 90)])])
    toks = encode_midi(midi, TokenizerConfig(instruments="lmd6"))
    assert [t for t in toks if t.startswith("i-")] == ["i-80", "i-128", "i-43", "i-25", "i-0", "i-48"]


def _scale_song(pitches, durations=None, velocities=None):
    durations = durations or [480] * len(pitches)
    velocities = velocities or [80] * len(pitches)
    notes, t = [], 0
    for p, d, v in zip(pitches, durations, velocities):
        notes.append((t, t + d, p, v))
        t += 480
    drums = [(0, 100, 37, 90)]  # drum pitch 37 (C#) must be neither counted nor moved
    return make_midi(None, [(0, False, notes), (0, True, drums)])


def _pitches(tokens):
    return [int(t[2:]) for t in tokens if t.startswith("p-")]


def test_pitch_normalisation_g_major_goes_to_c_major():
    g_major = [67, 69, 71, 72, 74, 76, 78, 79, 67, 71, 74]
    cfg = TokenizerConfig(normalize_pitch=True, ignore_ts=True)
    got = _pitches(encode_midi(_scale_song(g_major), cfg))
    assert 165 in got  # drum p-(37+128) unchanged
    assert sorted(p for p in got if p < 128) == sorted(p - 7 for p in g_major)
    off = _pitches(encode_midi(_scale_song(g_major), TokenizerConfig(ignore_ts=True)))
    assert sorted(p for p in off if p < 128) == sorted(g_major)


def test_pitch_normalisation_minor_tonic_wins_only_when_heavier():
    # E natural minor = G major's notes. More E's than G's -> E minor -> shift 21 - 16 = +5 (E -> A).
    e_minor = [64, 64, 64, 66, 67, 69, 71, 72, 74, 76, 76]
    got = _pitches(encode_midi(_scale_song(e_minor), TokenizerConfig(normalize_pitch=True)))
    assert sorted(p for p in got if p < 128) == sorted(p + 5 for p in e_minor)


def test_pitch_weighting_duration_velocity_can_differ_from_count():
    # by count E (3 notes) beats G (1 note) -> E minor (+5); weighted, one long loud G outweighs the short E's
    pitches = [64, 64, 64, 66, 67, 69, 71, 72, 74]
    durs = [40, 40, 40, 480, 3840, 480, 480, 480, 480]
    vels = [20, 20, 20, 80, 120, 80, 80, 80, 80]
    midi = _scale_song(pitches, durs, vels)
    by_count = _pitches(encode_midi(midi, TokenizerConfig(normalize_pitch=True)))
    weighted = _pitches(encode_midi(midi, TokenizerConfig(normalize_pitch=True, pitch_weighting="duration_velocity")))
    assert sorted(p for p in by_count if p < 128) == sorted(p + 5 for p in pitches)
    assert sorted(p for p in weighted if p < 128) == sorted(p - 7 for p in pitches)


def test_pitch_normalisation_moves_by_octaves_to_stay_in_range():
    low = [6, 7, 9, 11, 12, 14, 16, 18, 19]  # G major at the very bottom: -7 would put F#0 below 0 -> +5
    got = _pitches(encode_midi(_scale_song(low), TokenizerConfig(normalize_pitch=True)))
    assert sorted(p for p in got if p < 128) == sorted(p + 5 for p in low)


def test_config_dict_round_trip_and_validation():
    cfg = TokenizerConfig(encoding="remigen", instruments="lmd6", positions_per_beat=16, normalize_pitch=True,
                          pitch_weighting="duration_velocity", remove_empty_bars=True, ignore_ts=True)
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    assert TokenizerConfig.from_json(cfg.to_json()) == cfg
    for bad in ({"encoding": "remi"}, {"instruments": "all"}, {"pitch_weighting": "x"}, {"positions_per_beat": 0}):
        with pytest.raises(ValueError):
            TokenizerConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        TokenizerConfig.from_dict({"encoding": "remigen2", "resolution": 12})


# ---- bad input -------------------------------------------------------------------------------------------------


def _midi_bytes(midi):
    buf = io.BytesIO()
    midi.dump(file=buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.mid", b"", "empty_file"),
        ("text.mid", b"this is not a MIDI file at all\n" * 4, "not_midi"),
        ("truncated.mid", None, "truncated"),
        ("no_notes.mid", "no_notes", "no_notes"),
        ("no_tracks.mid", "no_tracks", "no_notes"),
    ],
    ids=lambda x: x if isinstance(x, str) and x.endswith(".mid") else "",
)
def test_bad_files_raise_midi_encode_error(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:
        path.write_bytes(_midi_bytes(make_song(4, seed=5))[:300])
    elif content == "no_notes":
        make_midi(path, [(0, False, [])])
    elif content == "no_tracks":
        make_midi(path, [])
    else:
        path.write_bytes(content)
    with pytest.raises(MidiEncodeError) as exc:
        encode_midi(path)
    assert isinstance(exc.value, ValueError) and exc.value.reason
    if reason:
        assert exc.value.reason == reason
    assert str(path) in str(exc.value)


def test_absurd_ticks_and_tempo_raise():
    with pytest.raises(MidiEncodeError) as exc:
        encode_midi(make_midi(None, [(0, False, [(2**30, 2**30 + 10, 60, 80)])], ticks_per_beat=24))
    assert exc.value.reason == "too_long"
    with pytest.raises(MidiEncodeError) as exc:
        encode_midi(make_midi(None, [(0, False, [(0, 10, 60, 80)])], tempos=[(0, 0.0)]))
    assert exc.value.reason == "bad_tempo"
    with pytest.raises(MidiEncodeError) as exc:
        encode_midi(make_midi(None, [(0, False, [(0, 10, 60, 80)])], ticks_per_beat=0))
    assert exc.value.reason == "bad_ticks_per_beat"


def test_pickup_bars_with_small_time_signatures():
    # music21 writes a 1/8 or 1/16 bar for an anacrusis, then the real metre
    notes = [(0, 240, 67, 80)] + [(240 + i * 480, 240 + (i + 1) * 480, 60 + i, 80) for i in range(8)]
    midi = make_midi(None, [(0, False, notes)], time_signatures=[(0, 1, 8), (240, 4, 4)])
    toks = encode_midi(midi)
    assert toks[:2] == ["s-14", "t-35"] and toks.index("b-1") == 7  # s-14 = (1, 8): one 6-position bar
    assert "s-9" in toks
    assert encode_midi(decode_tokens(toks).midi) == toks


# ---- decoding garbage ------------------------------------------------------------------------------------------


def test_decode_garbage_skips_and_counts():
    toks = ("s-9 t-35 o-0 i-0 p-60 d-12 v-20 d-3 v-1 p-61 o-2 x-1 hello </s> o-200 p-300 i-0 p-62 v-3 "
            "i-128 p-40 i-5 p-170 b-1 o-3 i-0 p-64 d-5").split()
    res = decode_tokens(toks)
    assert res.num_notes == 1
    assert res.skipped == Counter({
        "duration_without_pitch": 1,  # d-3
        "velocity_without_duration": 2,  # v-1, v-3
        "pitch_without_duration": 2,  # p-61 then o-2, p-62 then v-3
        "unknown_token": 2,  # x-1, hello
        "special_token": 1,  # </s>
        "value_out_of_range": 2,  # o-200 (>= 8P), p-300
        "pitch_instrument_mismatch": 2,  # p-40 under drums, p-170 under program 5
        "duration_without_velocity": 1,  # d-5 at the end
    })
    assert count_errors(toks) > 0


@pytest.mark.parametrize("tokens", ["d-3", "p-60 b-1", "o-0 i-0 p-60 d-1 v-1 zz", "o-47 o-47 i-0 p-60 d-1 v-400"])
def test_decode_strict_raises(tokens):
    with pytest.raises(ValueError):
        decode_tokens(tokens, strict=True)
    assert sum(decode_tokens(tokens).skipped.values()) >= 1


def test_ignore_ts_decoding_widens_long_bars_instead_of_dropping_notes():
    # 3/2 bars (72 positions) encoded without s- tokens: onsets up to 71 must survive decoding
    notes = [(i * 480, i * 480 + 480, 60 + i % 7, 80) for i in range(12)]
    midi = make_midi(None, [(0, False, notes)], time_signatures=[(0, 3, 2)])
    cfg = TokenizerConfig(ignore_ts=True)
    toks = encode_midi(midi, cfg)
    assert "o-60" in toks and toks.count("b-1") == 2
    res = decode_tokens(toks, cfg, strict=True)
    assert res.num_notes == 12 and encode_midi(res.midi, cfg) == toks
    assert [(t.numerator, t.denominator) for t in res.midi.time_signature_changes][0] == (6, 4)
    with pytest.raises(ValueError, match="onset beyond bar"):  # with s- tokens the bar length is known
        decode_tokens("s-9 t-35 o-60 i-0 p-60 d-3 v-1 b-1", strict=True)


def test_decode_empty_and_random_sequences_never_crash():
    import random

    assert decode_tokens([]).num_notes == 0
    rng = random.Random(0)
    fams = "bsotipdvqx"
    for _ in range(200):
        toks = [f"{rng.choice(fams)}-{rng.randrange(300)}" for _ in range(rng.randrange(60))]
        res = decode_tokens(toks)
        assert res.num_notes + sum(res.skipped.values()) <= len(toks) + 2
        assert all(n.end > n.start for t in res.midi.instruments for n in t.notes)


def test_symusic_reader_gives_identical_tokens(tmp_path):
    pytest.importorskip("symusic")
    make_song(6, seed=8).dump(str(tmp_path / "a.mid"))
    _ts_song().dump(str(tmp_path / "b.mid"))
    for name in ("a.mid", "b.mid"):
        for cfg in (TokenizerConfig(), TokenizerConfig(encoding="remigen", instruments="lmd6")):
            ours = encode_midi(tmp_path / name, cfg, reader="symusic")
            assert ours == encode_midi(tmp_path / name, cfg, reader="miditoolkit")
    (tmp_path / "bad.mid").write_bytes(b"MThd garbage")
    with pytest.raises(MidiEncodeError):
        encode_midi(tmp_path / "bad.mid", reader="symusic")
