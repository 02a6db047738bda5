"""A MIDI or token file -> `Piece`: the notes of every bar on the tokenizer's grid, bars cut as the tokenizer cuts them.

Both kinds of input go through the tokenizer's own quantiser (`data_prep.midi_to_tokens.quantize`): a MIDI file is
read as `museformer-prep encode` reads it, and a token file (`*.mid.txt`, one song of REMIGEN/REMIGEN2 tokens) is
first decoded back to MIDI by `data_prep.tokens_to_midi.decode_tokens`, whose round trip gives the same grid.
So bar boundaries follow the time signatures exactly as in training (a TS change takes effect at the next bar
start), onsets and durations are in grid positions (12 per quarter note by default), and drum notes carry
pitch + 128, as the `p-` tokens do.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.config import TokenizerConfig
from data_prep.constants import DEFAULT_POSITIONS_PER_BEAT, DRUM_INSTRUMENT, MIDI_SUFFIXES
from data_prep.errors import MidiEncodeError
from data_prep.midi_io import read_midi
from data_prep.midi_to_tokens import quantize
from data_prep.tokens_to_midi import decode_tokens
from data_prep.vocab import duration_to_id, id_to_duration, parse_token, pitch_to_id

TOKEN_SUFFIX = ".mid.txt"  # what `museformer-prep encode` writes for x.mid


@dataclass(frozen=True)
class PieceNote:
    bar_idx: int  # 0-based bar of the onset
    pos_in_bar: int  # onset, grid positions from the bar start
    pitch: int  # the p- value: MIDI pitch, or pitch + 128 for drums
    dur_pos: int  # duration in grid positions, quantised as the d- token keeps it (lower edge of its bin)
    inst: int  # the i- value: GM program 0..127, or 128 for any drum track
    velocity: int

    @property
    def key(self) -> tuple[int, int, int]:
        """What makes two notes "the same" for bar similarity (paper §3.1): onset in bar, pitch, duration."""
        return (self.pos_in_bar, self.pitch, self.dur_pos)

    @property
    def is_drum(self) -> bool:
        return self.inst == DRUM_INSTRUMENT


@dataclass
class Piece:
    name: str
    positions_per_beat: int
    bar_start_pos: list[int]  # absolute grid position of each bar start
    bar_length_pos: list[int]  # length of each bar in grid positions (from its time signature)
    notes: list[PieceNote]
    bar_time_signatures: list[tuple[int, int]] = field(default_factory=list)  # (numerator, denominator) per bar
    tempos_bpm: list[tuple[int, float]] = field(default_factory=list)  # (bar_idx where it starts, BPM), in order

    @property
    def num_bars(self) -> int:
        return len(self.bar_start_pos)

    def instruments(self) -> list[int]:
        return sorted({n.inst for n in self.notes})

    def bar_note_sets(self, inst: int | None = None) -> list[frozenset[tuple[int, int, int]]]:
        """N(i) for every bar i: the set of note keys, of all instruments pooled (inst=None) or of one."""
        sets: list[set] = [set() for _ in range(self.num_bars)]
        for n in self.notes:
            if inst is None or n.inst == inst:
                sets[n.bar_idx].add(n.key)
        return [frozenset(s) for s in sets]


class PieceError(ValueError):
    """A file that cannot be analysed; `reason` is a short label for the skip counts (as MidiEncodeError's)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def is_token_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(TOKEN_SUFFIX)


def is_midi_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in MIDI_SUFFIXES


def read_token_file(path: str | os.PathLike) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").split()
    except UnicodeDecodeError as e:
        raise PieceError("not_text", f"{os.fspath(path)}: not a token file (not UTF-8 text: {e.reason}).") from e
    except OSError as e:
        raise PieceError("unreadable_file", f"{os.fspath(path)}: cannot be read ({e.strerror}).") from e


def decode_token_file(path: str | os.PathLike, positions_per_beat: int = DEFAULT_POSITIONS_PER_BEAT):
    """A token file -> miditoolkit `MidiFile` (the tokenizer's decoder; malformed groups are skipped by it)."""
    tokens = read_token_file(path)
    return decode_tokens(tokens, token_config(tokens, positions_per_beat)).midi


def token_config(tokens: list[str], positions_per_beat: int = DEFAULT_POSITIONS_PER_BEAT) -> TokenizerConfig:
    """The tokenizer config a token file was most likely written with: the grid given, and --ignore-ts when it
    has no s- token (such files are decoded as 4/4 with widened bars)."""
    has_ts = any((parse_token(t) or ("", 0))[0] == "s" for t in tokens)
    return TokenizerConfig(positions_per_beat=positions_per_beat, ignore_ts=not has_ts)


def load_piece(
    path: str | os.PathLike,
    positions_per_beat: int = DEFAULT_POSITIONS_PER_BEAT,
    remove_empty_bars: bool = True,
) -> Piece:
    """Read a MIDI file (*.mid, *.midi) or a token file (*.mid.txt) into a `Piece`.

    remove_empty_bars drops the empty bars before the first note, as `museformer-prep --remove-empty-bars` does
    (the tokenizer never writes bars after the last onset). Raises PieceError / MidiEncodeError, both ValueErrors
    with a `.reason`.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise PieceError("missing_file", f"{name}: no such file.")
    midi = decode_token_file(name, positions_per_beat) if is_token_file(name) else read_midi(name)
    score = quantize(midi, TokenizerConfig(positions_per_beat=positions_per_beat), name)

    bar_starts = [b.start_pos for b in score.bars]
    bar_lengths = [b.length for b in score.bars]
    bar_ts = [b.ts for b in score.bars]
    tempos = [(max(bisect.bisect_right(bar_starts, pos) - 1, 0), bpm)
              for pos, bpm in zip(score.tempo_positions, score.tempos)]
    notes = []
    for onset in sorted(score.notes):
        bar_idx = bisect.bisect_right(bar_starts, onset) - 1
        for inst, group in score.notes[onset].items():
            for pitch, dur, vel in group:
                notes.append(PieceNote(
                    bar_idx=bar_idx,
                    pos_in_bar=onset - bar_starts[bar_idx],
                    pitch=pitch_to_id(pitch, inst == DRUM_INSTRUMENT),
                    dur_pos=id_to_duration(duration_to_id(dur, positions_per_beat), positions_per_beat),
                    inst=inst,
                    velocity=vel,
                ))
    first = min(n.bar_idx for n in notes) if remove_empty_bars else 0  # quantize() refuses files without notes
    if first:
        bar_starts, bar_lengths, bar_ts = bar_starts[first:], bar_lengths[first:], bar_ts[first:]
        notes = [PieceNote(n.bar_idx - first, n.pos_in_bar, n.pitch, n.dur_pos, n.inst, n.velocity) for n in notes]
        # the tempo in force at the new first bar starts there; later changes move with their bars
        kept = [(bar - first, bpm) for bar, bpm in tempos if bar >= first]
        before = [bpm for bar, bpm in tempos if bar <= first]
        tempos = ([(0, before[-1])] if not kept or kept[0][0] > 0 else []) + kept
    return Piece(name, positions_per_beat, bar_starts, bar_lengths, notes, bar_ts, tempos)


def find_inputs(paths: list[str]) -> tuple[list[str], dict[str, int]]:
    """Every MIDI and token file named by `paths` (files, or folders searched recursively), sorted per argument.

    A token file next to its own MIDI file (x.mid.txt beside x.mid) is left out so that no piece counts twice;
    such files are counted under "token_twin_of_midi". Raises FileNotFoundError for a path that does not exist.
    """
    found: list[str] = []
    left_out: dict[str, int] = {}
    for arg in paths:
        p = Path(arg)
        if p.is_file():
            found.append(os.fspath(p))
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"{arg}: no such file or folder; give MIDI files, token files (*.mid.txt) "
                                    "or folders that hold them.")
        files = sorted(q for q in p.rglob("*") if q.is_file() and (is_midi_file(q) or is_token_file(q)))
        midi_set = {os.fspath(q) for q in files if is_midi_file(q)}
        for q in files:
            if is_token_file(q) and os.fspath(q)[: -len(".txt")] in midi_set:
                left_out["token_twin_of_midi"] = left_out.get("token_twin_of_midi", 0) + 1
                continue
            found.append(os.fspath(q))
    return found, left_out


def skip_reason(err: Exception) -> str:
    return getattr(err, "reason", type(err).__name__)


__all__ = ["Piece", "PieceNote", "PieceError", "MidiEncodeError", "load_piece", "find_inputs", "skip_reason",
           "is_token_file", "is_midi_file"]
