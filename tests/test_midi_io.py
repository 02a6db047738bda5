"""The two MIDI readers give the same tokens: one hand-made MIDI file per cause of disagreement found.

Each file is built message by message with mido (so the order of events at one tick is ours), and the expected
tokens are written out by hand: tpb 480, P = 12 -> 40 ticks per position; 480 ticks = d-12; velocity 80 = v-20;
no time signature -> 4/4 = s-9; 120 BPM -> t-35, 100 -> t-32, 90 -> t-30, 60 -> t-23 (round(12 log2(bpm / 16))).
"""
from __future__ import annotations

import mido
import pytest

from data_prep import MidiEncodeError, encode_midi
from data_prep.midi_io import read_midi, scan_midi

symusic = pytest.importorskip("symusic", reason="the symusic reader is optional (extra 'fast')")


def write(path, tracks, tpb=480):
    """tracks: lists of (absolute tick, mido message) -> a format-1 MIDI file at `path`; events are sorted by tick,
    keeping the listed order at one tick."""
    mf = mido.MidiFile(type=1, ticks_per_beat=tpb)
    for events in tracks:
        track, last = mido.MidiTrack(), 0
        for tick, msg in sorted(events, key=lambda e: e[0]):
            track.append(msg.copy(time=tick - last))
            last = tick
        mf.tracks.append(track)
    mf.save(str(path))
    return path


def note(tick_on, tick_off, pitch=60, channel=0):
    return [(tick_on, mido.Message("note_on", note=pitch, velocity=80, channel=channel)),
            (tick_off, mido.Message("note_off", note=pitch, velocity=0, channel=channel))]


def tempo(tick, bpm):
    return (tick, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))


BAR = 1920
ONE_NOTE_BARS_1_AND_3 = note(0, 480) + note(2 * BAR, 2 * BAR + 480)

CASES = {
    # miditoolkit files a note under the program at its note-off, symusic at its note-on (seen in real files as
    # i-52 for the original's i-53)
    "program_change_inside_a_note": (
        [[(0, mido.Message("program_change", program=52)), *note(0, 480)[:1],
          (240, mido.Message("program_change", program=53)), *note(0, 480)[1:], *note(480, 960, 62)]],
        "s-9 t-35 o-0 i-53 p-60 d-12 v-20 o-12 i-53 p-62 d-12 v-20 b-1",
    ),
    # a tempo at tick 0 in a later track replaces every tempo listed before it (miditoolkit), so the 60 BPM of
    # bar 2 in the first track is gone
    "tempo_at_tick_0_in_a_later_track": (
        [[tempo(0, 120), tempo(BAR, 60)], [tempo(0, 100), *ONE_NOTE_BARS_1_AND_3]],
        "s-9 t-32 o-0 i-0 p-60 d-12 v-20 b-1 s-9 t-32 b-1 s-9 t-32 o-0 i-0 p-60 d-12 v-20 b-1",
    ),
    # a tempo equal to the one listed just before it (in track order, not time order) is dropped: the second
    # track's 60 BPM at bar 2 follows the first track's 60 BPM at bar 3
    "tempo_equal_to_the_previous_listed_one": (
        [[tempo(0, 120), tempo(2 * BAR, 60)], [tempo(BAR, 60), *ONE_NOTE_BARS_1_AND_3]],
        "s-9 t-35 o-0 i-0 p-60 d-12 v-20 b-1 s-9 t-35 b-1 s-9 t-23 o-0 i-0 p-60 d-12 v-20 b-1",
    ),
    # two tempi at one tick: the later in the file wins
    "two_tempi_at_one_tick": (
        [[tempo(0, 120), tempo(BAR, 60), tempo(BAR, 90), *ONE_NOTE_BARS_1_AND_3]],
        "s-9 t-35 o-0 i-0 p-60 d-12 v-20 b-1 s-9 t-30 b-1 s-9 t-30 o-0 i-0 p-60 d-12 v-20 b-1",
    ),
    # two time signatures at one tick: the later in the file wins (3/4 = s-8, bars of 36 positions)
    "two_time_signatures_at_one_tick": (
        [[(0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
          (0, mido.MetaMessage("time_signature", numerator=3, denominator=4)), *note(0, 480), *note(1440, 1920)]],
        "s-8 t-35 o-0 i-0 p-60 d-12 v-20 b-1 s-8 t-35 o-0 i-0 p-60 d-12 v-20 b-1",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_symusic_reader_gives_miditoolkits_tokens(case, tmp_path):
    tracks, expected = CASES[case]
    path = write(tmp_path / f"{case}.mid", tracks)
    assert encode_midi(path, reader="miditoolkit") == expected.split()
    assert encode_midi(path, reader="symusic") == expected.split()


def test_many_tempi_with_ties_at_one_tick(tmp_path):
    # more events than an insertion sort handles (symusic's sort is not stable on long lists): 40 tempo changes,
    # every fifth tick holding two, in two tracks
    events0, events1 = [tempo(0, 120)], []
    for k in range(1, 41):
        events0.append(tempo(k * 240, 60 + k))
        if k % 5 == 0:
            events0.append(tempo(k * 240, 150 + k))
        if k % 7 == 0:
            events1.append(tempo(k * 240 + 120, 200 - k))
    notes = [ev for k in range(40) for ev in note(k * 240, k * 240 + 200, 60 + k % 12)]
    events1 = sorted(events1 + notes, key=lambda e: e[0])
    path = write(tmp_path / "tempi.mid", [events0, events1])
    ours = encode_midi(path, reader="symusic", cfg=_remigen())
    assert ours == encode_midi(path, reader="miditoolkit", cfg=_remigen())
    assert len({t for t in ours if t.startswith("t-")}) > 10


def _remigen():
    from data_prep import TokenizerConfig

    return TokenizerConfig(encoding="remigen")  # a tempo token at every onset, so every tempo change shows


def test_scan_finds_program_changes_while_a_note_sounds_only(tmp_path):
    pc = lambda tick, channel=0: (tick, mido.Message("program_change", channel=channel, program=5))  # noqa: E731
    cases = {
        "before_the_notes": ([[pc(0), *note(0, 480)]], False),
        "between_notes": ([[*note(0, 480), pc(960), *note(960, 1440)]], False),
        "inside_a_note": ([[*note(0, 480), pc(240)]], True),
        "inside_a_note_of_another_channel": ([[*note(0, 480), pc(240, channel=1), *note(960, 1440, channel=1)]],
                                             False),
        "at_the_note_off_tick_before_it": ([[note(0, 480)[0], pc(480), note(0, 480)[1]]], True),
    }
    for name, (tracks, during) in cases.items():
        path = write(tmp_path / f"{name}.mid", tracks)
        assert scan_midi(path.read_bytes()).program_change_during_note == during, name
        assert encode_midi(path, reader="symusic") == encode_midi(path, reader="miditoolkit"), name


def test_running_status_and_sysex_are_walked(tmp_path):
    # mido writes running status; a sysex and a text event sit between the notes
    events = [(0, mido.Message("sysex", data=[1, 2, 3])), *note(0, 480), (480, mido.MetaMessage("text", text="x")),
              tempo(960, 90), *note(960, 1440, 62), *note(1440, 1920, 64)]
    path = write(tmp_path / "rs.mid", [events])
    scan = scan_midi(path.read_bytes())
    assert [(t.time, round(t.tempo, 3)) for t in scan.tempo_changes] == [(0, 120.0), (960, 90.0)]
    assert encode_midi(path, reader="symusic") == encode_midi(path, reader="miditoolkit")


def test_symusic_reader_errors_are_midi_encode_errors(tmp_path):
    (tmp_path / "bad.mid").write_bytes(b"MThd garbage")
    with pytest.raises(MidiEncodeError):
        read_midi(tmp_path / "bad.mid", reader="symusic")
