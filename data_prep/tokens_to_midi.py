"""REMIGEN2/REMIGEN tokens -> MIDI (spec §1.7): the only code that builds a `MidiFile`; never crashes on garbage."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import miditoolkit

from .config import TokenizerConfig
from .constants import (
    BEAT_NOTE_FACTOR,
    DECODE_TICKS_PER_BEAT,
    DEFAULT_BPM,
    DEFAULT_TS,
    DRUM_INSTRUMENT,
    MAX_NOTES_PER_BAR,
    NUM_PITCHES,
)
from .vocab import bar_length, family_ranges, id_to_duration, id_to_tempo, id_to_ts, id_to_velocity, parse_token

MAX_BAR_BEATS = BEAT_NOTE_FACTOR * MAX_NOTES_PER_BAR  # a bar is at most 8 quarter notes
SPECIAL_TOKENS = frozenset({"<s>", "<pad>", "</s>", "<unk>"})


@dataclass
class DecodeResult:
    midi: miditoolkit.MidiFile
    skipped: Counter = field(default_factory=Counter)  # reason -> number of tokens skipped
    num_notes: int = 0  # notes written (after resolving overlaps)
    # same-pitch overlaps resolved (see resolve_overlaps): "same_onset" -> notes dropped, "shortened" -> notes cut
    resolved: Counter = field(default_factory=Counter)


def resolve_overlaps(notes: list[miditoolkit.Note]) -> tuple[list[miditoolkit.Note], Counter]:
    """Make the notes of one track playable as a MIDI file: no two notes of one pitch may sound at once.

    A MIDI file cannot hold a note whose pitch is already sounding on the same channel (a note-off ends one of
    them, which one is up to the reader), so the decoder decides, per pitch, in onset order:
    - of several notes at one onset, the longest is kept (equal lengths: the loudest), the others are dropped;
    - a note still sounding when the next note of its pitch starts ends there.
    Returns the kept notes in their input order and Counter(same_onset=dropped, shortened=cut).
    """
    counts: Counter = Counter()
    by_pitch: dict[int, list[int]] = defaultdict(list)
    for k, n in enumerate(notes):
        by_pitch[n.pitch].append(k)
    keep = []
    for idx in by_pitch.values():
        idx.sort(key=lambda k: (notes[k].start, -notes[k].end, -notes[k].velocity, k))
        prev = None
        for k in idx:
            note = notes[k]
            if prev is not None and note.start == prev.start:
                counts["same_onset"] += 1
                continue
            if prev is not None and prev.end > note.start:
                prev.end = note.start
                counts["shortened"] += 1
            keep.append(k)
            prev = note
    return [notes[k] for k in sorted(keep)], counts


def decode_ticks_per_beat(positions_per_beat: int) -> int:
    """480 (as the original) when P divides it, else a multiple of P, so every grid position is a whole tick;
    at least 4 ticks per position so that a 0-length note can be written shorter than half a position."""
    tpb = math.lcm(DECODE_TICKS_PER_BEAT, positions_per_beat)
    while tpb // positions_per_beat < 4:
        tpb *= 2
    return tpb


def decode_tokens(
    tokens: list[str] | str, cfg: TokenizerConfig = TokenizerConfig(), strict: bool = False
) -> DecodeResult:
    """Token strings (a list, or one space-separated string) -> `DecodeResult`.

    Malformed groups are skipped and counted in `.skipped` by reason (a `d-` without its `p-`, unknown tokens,
    out-of-range values, ...); with strict=True the first problem raises ValueError instead.

    Same-pitch notes that would overlap in one track are resolved by `resolve_overlaps` (counted in
    `.resolved`), so the MidiFile holds exactly what a MIDI file can store and re-reading it changes nothing.

    Differences from the original decoder: `d-0` (a note shorter than half a grid step) becomes a quarter-step
    note instead of a whole step, so that re-encoding gives `d-0` again; ticks per beat are 480 unless P does
    not divide 480; with cfg.ignore_ts a bar whose onsets go past 4/4 is widened to n/4 instead of losing notes.
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    P = cfg.positions_per_beat
    tpb = decode_ticks_per_beat(P)
    ticks_per_pos = tpb // P
    ranges = family_ranges(TokenizerConfig(positions_per_beat=P))  # accept any instrument / TS id on decode
    valid = {fam: set(r) for fam, r in ranges.items()}
    valid["b"] = {0, 1}  # b-0 is in the original dictionaries; treat it as a bar end too

    skipped: Counter = Counter()
    midi = miditoolkit.MidiFile(ticks_per_beat=tpb)
    tracks: dict[int, miditoolkit.Instrument] = {}
    ts = DEFAULT_TS
    bar_start = 0
    onset = 0
    inst = 0  # default program 0 until an i- token
    tempo_id: int | None = None
    bar_ts: list[tuple[int, tuple[int, int]]] = []  # (bar start, TS) of every bar, for the TS events
    cur_bar_ts = ts  # TS of the bar being decoded (may be widened, see o- below)
    pitch: int | None = None  # pending p-
    dur: int | None = None  # pending d- (in positions)
    note_pitch = 0  # pitch of the pending d-
    num_notes = 0

    def problem(reason: str, j: int, tok: str) -> None:
        if strict:
            raise ValueError(f"token {j} ({tok!r}): {reason.replace('_', ' ')}.")
        skipped[reason] += 1

    for j, tok in enumerate(tokens):
        parsed = parse_token(tok)
        fam, val = parsed if parsed else (None, None)
        # a pending p-/d- that is not followed by its d-/v- is an incomplete note
        if pitch is not None and fam != "d":
            problem("pitch_without_duration", j, tok)
            pitch = None
        if dur is not None and fam != "v":
            problem("duration_without_velocity", j, tok)
            dur = None
        if tok in SPECIAL_TOKENS:
            problem("special_token", j, tok)
            continue
        if fam not in valid:
            problem("unknown_token", j, tok)
            continue
        if val not in valid[fam]:
            problem("value_out_of_range", j, tok)
            continue
        if fam == "b":
            bar_ts.append((bar_start, cur_bar_ts))
            bar_start += bar_length(cur_bar_ts, P)
            onset = bar_start
            cur_bar_ts = ts
        elif fam == "s":
            ts = cur_bar_ts = id_to_ts(val)
        elif fam == "o":
            if val >= bar_length(cur_bar_ts, P):
                if not cfg.ignore_ts:
                    problem("onset_beyond_bar", j, tok)
                    continue
                # Without s- tokens the bar's real length is unknown (4/4 is assumed); a later onset proves the
                # bar is longer, so widen it to whole beats (n/4) instead of dropping notes. Re-encoding gives
                # the same tokens, since only onsets inside the bar are written.
                cur_bar_ts = (min(MAX_BAR_BEATS, val // P + 1), 4)
            onset = bar_start + val
        elif fam == "t":
            if val != tempo_id:
                midi.tempo_changes.append(miditoolkit.TempoChange(id_to_tempo(val), onset * ticks_per_pos))
                tempo_id = val
        elif fam == "i":
            inst = val
        elif fam == "p":
            if (val >= NUM_PITCHES) != (inst == DRUM_INSTRUMENT):
                problem("pitch_instrument_mismatch", j, tok)
                continue
            pitch = val % NUM_PITCHES
        elif fam == "d":
            if pitch is None:
                problem("duration_without_pitch", j, tok)
                continue
            dur = id_to_duration(val, P)
            note_pitch, pitch = pitch, None
        elif fam == "v":
            if dur is None:
                problem("velocity_without_duration", j, tok)
                continue
            start_tick = onset * ticks_per_pos
            end_tick = start_tick + (dur * ticks_per_pos if dur > 0 else ticks_per_pos // 4)
            track = tracks.get(inst)
            if track is None:
                is_drum = inst == DRUM_INSTRUMENT
                track = miditoolkit.Instrument(program=0 if is_drum else inst, is_drum=is_drum)
                tracks[inst] = track
            track.notes.append(miditoolkit.Note(id_to_velocity(val), note_pitch, start_tick, end_tick))
            dur = None
    if pitch is not None:
        problem("pitch_without_duration", len(tokens), "<end>")
    if dur is not None:
        problem("duration_without_velocity", len(tokens), "<end>")

    if not midi.tempo_changes or midi.tempo_changes[0].time > 0:
        midi.tempo_changes.insert(0, miditoolkit.TempoChange(DEFAULT_BPM, 0))
    bar_ts.append((bar_start, cur_bar_ts))  # the last bar, if it has no b-1
    prev_ts = None
    for start_pos, bts in bar_ts:
        if bts != prev_ts:
            midi.time_signature_changes.append(miditoolkit.TimeSignature(bts[0], bts[1], start_pos * ticks_per_pos))
        prev_ts = bts
    resolved: Counter = Counter()
    for track in tracks.values():
        track.notes, counts = resolve_overlaps(track.notes)
        resolved.update(counts)
        num_notes += len(track.notes)
    midi.instruments = [tracks[k] for k in sorted(tracks)]
    ends = [n.end for t in midi.instruments for n in t.notes]
    midi.max_tick = max(ends) if ends else 0
    return DecodeResult(midi, skipped, num_notes, resolved)
