"""Metrics peers report (MMT, via MusPy): pitch-class entropy, scale consistency, groove consistency; plus the
empty-bar rate and notes per bar. Computed on our `Piece` (the tokenizer's grid and bars).

The definitions are MusPy's (muspy/metrics/metrics.py, v0.5.0), written here from those definitions rather than
calling MusPy, because:
- MusPy re-reads and re-quantises MIDI with its own time grid, so its numbers would not be on the bars and grid
  that the model is trained on; its groove consistency assumes one constant time signature (a fixed number of
  steps per measure), while our bars follow every time-signature change;
- its last release (0.5.0) is from 2022 and it pulls in music21, pretty_midi, pypianoroll, requests, ... for
  about 40 lines of arithmetic.
Per piece (drum notes ignored for the two pitch metrics, as in MusPy):
- pitch-class entropy = -sum_c p(c) log2 p(c) over the 12 pitch classes of the notes (0 .. log2 12 = 3.585 bits);
- scale consistency = the largest fraction of notes inside one of the 24 major / natural-minor scales;
- groove consistency = 1 - mean over neighbouring bars of hamming(G_i, G_i+1) / bar length, where G_i is the
  binary onset vector of bar i over all instruments, drums included (MusPy's; a bar pair of different lengths
  is compared over the longer one).
A corpus value is the mean over the pieces where the metric is defined. The empty-bar rate and notes per bar
are pooled over all bars of the corpus.
"""
from __future__ import annotations

import math
from collections import Counter

from .piece import Piece
from .similarity import mean_of

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)  # semitones above the tonic; natural minor = the same sets rotated
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)


def pitch_class_entropy(pitches: list[int]) -> float | None:
    """Shannon entropy (bits) of the pitch-class histogram; None without notes."""
    if not pitches:
        return None
    counts = Counter(p % 12 for p in pitches)
    total = len(pitches)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def scale_consistency(pitches: list[int]) -> float | None:
    """Largest in-scale rate over the 12 major and 12 minor scales; None without notes."""
    if not pitches:
        return None
    counts = Counter(p % 12 for p in pitches)
    best = 0
    for scale in (MAJOR_SCALE, MINOR_SCALE):
        for tonic in range(12):
            best = max(best, sum(counts[(tonic + s) % 12] for s in scale))
    return best / len(pitches)


def groove_consistency(piece: Piece) -> float | None:
    """1 - mean normalised hamming distance of neighbouring bars' onset vectors; None for a one-bar piece."""
    if piece.num_bars < 2:
        return None
    onsets: list[set[int]] = [set() for _ in range(piece.num_bars)]
    for n in piece.notes:
        onsets[n.bar_idx].add(n.pos_in_bar)
    distances = [
        len(onsets[i] ^ onsets[i + 1]) / max(piece.bar_length_pos[i], piece.bar_length_pos[i + 1])
        for i in range(piece.num_bars - 1)
    ]
    return 1 - sum(distances) / len(distances)


def piece_metrics(piece: Piece) -> dict[str, float | None]:
    pitched = [n.pitch for n in piece.notes if not n.is_drum]
    return {
        "pitch_class_entropy": pitch_class_entropy(pitched),
        "scale_consistency": scale_consistency(pitched),
        "groove_consistency": groove_consistency(piece),
    }


class MetricsStats:
    """Per-piece metrics averaged over a corpus, plus pooled bar counts."""

    PER_PIECE = ("pitch_class_entropy", "scale_consistency", "groove_consistency")

    def __init__(self):
        self.values: dict[str, list[float]] = {k: [] for k in self.PER_PIECE}
        self.bars = 0
        self.empty_bars = 0
        self.notes = 0

    def add_piece(self, piece: Piece) -> None:
        for key, value in piece_metrics(piece).items():
            if value is not None:
                self.values[key].append(value)
        used = {n.bar_idx for n in piece.notes}
        self.bars += piece.num_bars
        self.empty_bars += piece.num_bars - len(used)
        self.notes += len(piece.notes)

    def summary(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {k: mean_of(v) for k, v in self.values.items()}
        out["empty_bar_rate"] = self.empty_bars / self.bars if self.bars else None
        out["notes_per_bar"] = self.notes / self.bars if self.bars else None
        out["bars"] = self.bars
        out["notes"] = self.notes
        return out
