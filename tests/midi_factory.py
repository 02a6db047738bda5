"""Build small MIDI files inside tests with miditoolkit (tests must not depend on ../shared)."""
from __future__ import annotations

import os
import random
from typing import Iterable, Sequence

import miditoolkit

NoteSpec = tuple[int, int, int, int]  # (start_tick, end_tick, pitch, velocity)
TrackSpec = tuple[int, bool, Sequence[NoteSpec]]  # (program, is_drum, notes)


def make_midi(
    path: str | os.PathLike | None = None,
    tracks: Iterable[TrackSpec] = (),
    tempos: Iterable[tuple[int, float]] = ((0, 120.0),),
    time_signatures: Iterable[tuple[int, int, int]] = ((0, 4, 4),),
    ticks_per_beat: int = 480,
) -> miditoolkit.MidiFile:
    """A `MidiFile` with the given tracks, tempo changes (tick, bpm) and time signatures (tick, num, den);
    also written to `path` when one is given."""
    midi = miditoolkit.MidiFile(ticks_per_beat=ticks_per_beat)
    midi.tempo_changes = [miditoolkit.TempoChange(float(bpm), int(tick)) for tick, bpm in tempos]
    midi.time_signature_changes = [miditoolkit.TimeSignature(num, den, int(tick)) for tick, num, den in time_signatures]
    for program, is_drum, notes in tracks:
        inst = miditoolkit.Instrument(program=program, is_drum=is_drum, name=f"{'drums' if is_drum else program}")
        inst.notes = [miditoolkit.Note(vel, pitch, start, end) for start, end, pitch, vel in notes]
        midi.instruments.append(inst)
    ends = [n.end for inst in midi.instruments for n in inst.notes]
    midi.max_tick = max(ends, default=0)
    if path is not None:
        midi.dump(os.fspath(path))
    return midi


def make_song(
    num_bars: int = 8,
    seed: int = 0,
    ticks_per_beat: int = 480,
    tempos: Iterable[tuple[int, float]] | None = None,
    time_signatures: Iterable[tuple[int, int, int]] | None = None,
    humanize: bool = True,
) -> miditoolkit.MidiFile:
    """A pop-like 4/4 song: lead melody (80), piano chords (0), guitar (25), strings (48), bass (33), drums.

    Chords follow a I-V-vi-IV loop in a random key; velocities vary; with `humanize` onsets and ends are
    jittered off the grid by a few ticks (so quantisation matters). Some bars of the lead are left empty.
    """
    rng = random.Random(seed)
    tpb = ticks_per_beat
    bar = 4 * tpb
    key = rng.randrange(12)
    prog = [(0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12)]  # I V vi IV as semitones above the tonic
    scale = [0, 2, 4, 5, 7, 9, 11]

    def jit(t: int) -> int:
        return max(0, t + (rng.randint(-tpb // 24, tpb // 24) if humanize else 0))

    lead, piano, guitar, strings, bass, drums = [], [], [], [], [], []
    for b in range(num_bars):
        t0 = b * bar
        chord = prog[b % 4]
        root = 48 + key
        # piano: block chord on beats 1 and 3
        for beat in (0, 2):
            for iv in chord:
                piano.append((jit(t0 + beat * tpb), jit(t0 + (beat + 2) * tpb), root + 12 + iv, rng.randint(60, 90)))
        # guitar: eighth-note arpeggio
        for k in range(8):
            iv = chord[k % 3]
            s = t0 + k * tpb // 2
            guitar.append((jit(s), jit(s + tpb // 2), root + iv + (12 if k % 2 else 0), rng.randint(50, 80)))
        # strings: one whole-bar chord, tied over two bars every fourth bar (long notes)
        if b % 4 == 0:
            for iv in chord:
                strings.append((t0, t0 + 2 * bar, root + 24 + iv, 70))
        # bass: root on each beat, a staccato (zero-length on the grid) ghost note now and then
        for beat in range(4):
            s = t0 + beat * tpb
            bass.append((jit(s), jit(s + tpb - tpb // 8), 36 + key + chord[0] % 12, rng.randint(80, 110)))
        if b % 3 == 1:
            bass.append((t0 + 3 * tpb + tpb // 2, t0 + 3 * tpb + tpb // 2 + 5, 48 + key + chord[0] % 12, 40))
        # lead: random scale walk in sixteenths and eighths, silent every fifth bar
        if b % 5 != 4:
            s = t0
            deg = rng.randrange(7)
            while s < t0 + bar:
                step = rng.choice([tpb // 4, tpb // 2, tpb // 2, tpb, tpb // 3])
                deg = min(13, max(0, deg + rng.choice([-2, -1, 1, 1, 2])))
                pitch = 72 + key + scale[deg % 7] + 12 * (deg // 7) - 12
                lead.append((jit(s), jit(s + step), pitch, rng.randint(70, 120)))
                s += step
        # drums: kick 1 & 3, snare 2 & 4, closed hi-hat eighths, crash at every 4th bar
        for k in range(8):
            s = t0 + k * tpb // 2
            drums.append((jit(s), jit(s) + tpb // 4, 42, rng.randint(50, 90)))
        for beat in (0, 2):
            drums.append((jit(t0 + beat * tpb), jit(t0 + beat * tpb) + tpb // 4, 36, 100))
        for beat in (1, 3):
            drums.append((jit(t0 + beat * tpb), jit(t0 + beat * tpb) + tpb // 4, 38, 95))
        if b % 4 == 0:
            drums.append((t0, t0 + tpb, 49, 110))
    tracks = [
        (80, False, lead),
        (0, False, piano),
        (25, False, guitar),
        (48, False, strings),
        (33, False, bass),
        (0, True, drums),
    ]
    return make_midi(
        None,
        tracks,
        tempos=tempos if tempos is not None else [(0, 100.0 + 10 * (seed % 5))],
        time_signatures=time_signatures if time_signatures is not None else [(0, 4, 4)],
        ticks_per_beat=tpb,
    )
