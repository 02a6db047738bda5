"""MIDI -> REMIGEN2/REMIGEN tokens (spec §1.2): quantise notes to the grid, lay out bars, emit token strings."""
from __future__ import annotations

import bisect
import os
from collections import defaultdict
from dataclasses import dataclass

import miditoolkit

from .config import TokenizerConfig
from .constants import DEFAULT_BPM, DEFAULT_TS, DRUM_INSTRUMENT, MAX_POSITIONS, MAX_TICK
from .errors import MidiEncodeError
from .instruments import instrument_id, instrument_sort_key
from .keys import normalization_shift
from .midi_io import read_midi
from .vocab import (
    bar_length,
    duration_to_id,
    id_to_duration,
    id_to_velocity,
    pitch_to_id,
    reduce_time_signature,
    tempo_to_id,
    ts_to_id,
    velocity_to_id,
)


@dataclass(frozen=True)
class Bar:
    start_pos: int
    length: int  # positions
    ts: tuple[int, int]  # reduced time signature in force at the bar start


@dataclass
class QuantizedScore:
    """The quantised reference a round trip is compared with: onset -> instrument -> [(pitch, dur_pos, velocity)]."""

    bars: list[Bar]
    notes: dict[int, dict[int, list[tuple[int, int, int]]]]
    tempo_positions: list[int]  # sorted positions of tempo changes (position 0 always present)
    tempos: list[float]  # BPM at those positions

    def tempo_at(self, pos: int) -> float:
        return self.tempos[bisect.bisect_right(self.tempo_positions, pos) - 1]


def tick_to_pos(tick: int, ticks_per_beat: int, positions_per_beat: int) -> int:
    """Nearest grid position, with Python's round-half-to-even, exactly as the original computes it."""
    return round(tick * positions_per_beat / ticks_per_beat)


def quantize(midi: miditoolkit.MidiFile, cfg: TokenizerConfig, name: str = "<MidiFile>") -> QuantizedScore:
    """Notes on the grid, bars and tempi of `midi` (spec §1.2 steps 1-3). Raises MidiEncodeError."""
    tpb = int(midi.ticks_per_beat)
    P = cfg.positions_per_beat
    if tpb <= 0 or tpb > 2**15:
        raise MidiEncodeError("bad_ticks_per_beat", f"{name}: ticks_per_beat={tpb} is not a usable resolution.")

    raw = []  # (onset, inst, pitch, dur, vel)
    for inst in midi.instruments:
        inst_id = instrument_id(inst.program, inst.is_drum, cfg.instruments)
        for note in inst.notes:
            start, end = int(note.start), int(note.end)
            if start < 0 or end < 0 or start >= MAX_TICK or end >= MAX_TICK:
                raise MidiEncodeError(
                    "bad_note_time", f"{name}: a note spans ticks {start}..{end}, outside 0..2**31."
                )
            if not 0 <= note.pitch <= 127:  # cannot come from a file, only from a hand-built MidiFile
                raise MidiEncodeError("bad_pitch", f"{name}: a note has pitch {note.pitch}, outside 0..127.")
            onset = tick_to_pos(start, tpb, P)
            # zero- and negative-length notes (the original asserts end > start) keep duration 0
            dur = max(0, tick_to_pos(end, tpb, P) - onset)
            raw.append((onset, inst_id, int(note.pitch), dur, int(note.velocity)))
    if not raw:
        raise MidiEncodeError("no_notes", f"{name}: the file has no notes.")
    max_pos = max(r[0] for r in raw)
    if max_pos > MAX_POSITIONS:
        raise MidiEncodeError(
            "too_long",
            f"{name}: the last onset is at grid position {max_pos} ({max_pos // (4 * P)} bars of 4/4), "
            f"beyond the limit of {MAX_POSITIONS}; the file's ticks or tempo are probably broken.",
        )

    if cfg.normalize_pitch:
        pitched = [r for r in raw if r[1] != DRUM_INSTRUMENT]
        shift = normalization_shift(
            [r[2] for r in pitched],
            [id_to_duration(duration_to_id(r[3], P), P) for r in pitched],
            [id_to_velocity(velocity_to_id(r[4])) for r in pitched],
            cfg.pitch_weighting,
        )
        if shift:
            raw = [(o, i, p + shift if i != DRUM_INSTRUMENT else p, d, v) for (o, i, p, d, v) in raw]

    # Time signatures and tempi: the last event at a position wins; events after the last onset are ignored.
    ts_at: dict[int, tuple[int, int]] = {}
    for ts in midi.time_signature_changes:
        pos = tick_to_pos(int(ts.time), tpb, P)
        if pos <= max_pos:
            ts_at[pos] = reduce_time_signature(ts.numerator, ts.denominator)
    ts_at.setdefault(0, DEFAULT_TS)
    tempo_at: dict[int, float] = {}
    for tc in midi.tempo_changes:
        pos = tick_to_pos(int(tc.time), tpb, P)
        if pos <= max_pos:
            bpm = float(tc.tempo)
            if not bpm > 0 or bpm != bpm or bpm == float("inf"):
                raise MidiEncodeError("bad_tempo", f"{name}: tempo {tc.tempo!r} BPM at tick {tc.time} is invalid.")
            tempo_at[pos] = bpm
    tempo_at.setdefault(0, DEFAULT_BPM)

    # Bars: the length is fixed at each bar start from the TS in force there, so a mid-bar TS change waits.
    ts_positions = sorted(ts_at)
    bars: list[Bar] = []
    pos = 0
    while pos <= max_pos:
        ts = ts_at[ts_positions[bisect.bisect_right(ts_positions, pos) - 1]]
        length = bar_length(ts, P)
        bars.append(Bar(pos, length, ts))
        pos += length

    notes: dict[int, dict[int, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
    for onset, inst_id, pitch, dur, vel in raw:
        notes[onset][inst_id].append((pitch, dur, vel))
    tempo_positions = sorted(tempo_at)
    return QuantizedScore(bars, notes, tempo_positions, [tempo_at[p] for p in tempo_positions])


def tokens_from_score(score: QuantizedScore, cfg: TokenizerConfig) -> list[str]:
    """Emit REMIGEN2 / REMIGEN tokens bar by bar (spec §1.2 step 4), then trim empty bars (step 5)."""
    P = cfg.positions_per_beat
    remigen2 = cfg.encoding == "remigen2"
    inst_key = instrument_sort_key(cfg.instruments)
    onsets = sorted(score.notes)
    tokens: list[str] = []
    k = 0
    for bar in score.bars:
        if not cfg.ignore_ts:
            tokens.append(f"s-{ts_to_id(bar.ts)}")
        if remigen2:
            tokens.append(f"t-{tempo_to_id(score.tempo_at(bar.start_pos))}")
        bar_end = bar.start_pos + bar.length
        while k < len(onsets) and onsets[k] < bar_end:
            onset = onsets[k]
            k += 1
            tokens.append(f"o-{onset - bar.start_pos}")
            if not remigen2:
                tokens.append(f"t-{tempo_to_id(score.tempo_at(onset))}")
            by_inst = score.notes[onset]
            for inst in sorted(by_inst, key=inst_key):
                tokens.append(f"i-{inst}")
                is_drum = inst == DRUM_INSTRUMENT
                # high_to_low: (pitch, duration, velocity) descending
                for pitch, dur, vel in sorted(by_inst[inst], reverse=True):
                    tokens.append(f"p-{pitch_to_id(pitch, is_drum)}")
                    tokens.append(f"d-{duration_to_id(dur, P)}")
                    tokens.append(f"v-{velocity_to_id(vel)}")
        tokens.append("b-1")
    if cfg.remove_empty_bars:
        tokens = trim_empty_bars(tokens, cfg)
    return tokens


def trim_empty_bars(tokens: list[str], cfg: TokenizerConfig) -> list[str]:
    """Token-level trim as the original: start at the last bar-start token before the first note (t- for
    REMIGEN2 with ignore_ts, o- for REMIGEN with ignore_ts, s- otherwise); end at the first b-1 after the last
    note."""
    note_idx = [j for j, t in enumerate(tokens) if t.startswith("p-")]
    if not note_idx:
        return tokens
    first, last = note_idx[0], note_idx[-1]
    if not cfg.ignore_ts:
        head = "s-"
    else:
        head = "t-" if cfg.encoding == "remigen2" else "o-"
    start = 0
    for j in range(first, -1, -1):
        if tokens[j].startswith(head):
            start = j
            break
    end = len(tokens)
    for j in range(last, len(tokens)):
        if tokens[j] == "b-1":
            end = j + 1
            break
    return tokens[start:end]


def encode_midi(
    midi_or_path: miditoolkit.MidiFile | str | os.PathLike,
    cfg: TokenizerConfig = TokenizerConfig(),
    reader: str = "miditoolkit",
) -> list[str]:
    """MIDI file or `MidiFile` -> token strings. Raises MidiEncodeError (a ValueError) with `.reason`."""
    if isinstance(midi_or_path, miditoolkit.MidiFile):
        midi, name = midi_or_path, "<MidiFile>"
    else:
        name = os.fspath(midi_or_path)
        midi = read_midi(name, reader=reader)
    return tokens_from_score(quantize(midi, cfg, name), cfg)
