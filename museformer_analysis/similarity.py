"""Bar similarity (Museformer paper §3.1): l(i, j) of two bars, the bar x bar matrix, L_t over a corpus, and SE.

l(i, j) = |N(i) ∩ N(j)| / |N(i) ∪ N(j)|, where N(i) is the set of notes of bar i and a note is (onset within its
bar, pitch, duration) on the tokenizer's grid (drum notes carry pitch + 128, so they never match a pitched note).
A pair of two empty bars has no defined similarity and is skipped; an empty bar against a non-empty one is 0.
L_t is the mean of l(i, i + t) over every such pair of a corpus (each pair weighs the same, so long pieces weigh
more, as in the paper's corpus statistics). The similarity error (SE, spec §6.2; never released with the
paper) is the mean over t of |L_t(reference) - L_t(generated)|.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from .piece import Piece

DEFAULT_MAX_DISTANCE = 32  # the paper's Fig. 1 goes to 32 bars, Museformer's farthest fine-attention bar


def bar_similarity(a: frozenset, b: frozenset) -> float | None:
    """l(i, j) of two note sets; None for two empty bars (the pair is skipped)."""
    union = len(a | b)
    if union == 0:
        return None
    return len(a & b) / union


def similarity_matrix(note_sets: Sequence[frozenset]) -> np.ndarray:
    """(num_bars, num_bars) float array of l(i, j); NaN where both bars are empty."""
    n = len(note_sets)
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i, n):
            s = bar_similarity(note_sets[i], note_sets[j])
            if s is not None:
                out[i, j] = out[j, i] = s
    return out


def series_of(piece: Piece, per_instrument: bool) -> list[tuple[str, list[frozenset]]]:
    """The bar sequences whose pairs are compared: one pooled over instruments, or one per instrument."""
    if not per_instrument:
        return [("all", piece.bar_note_sets())]
    return [(str(inst), piece.bar_note_sets(inst)) for inst in piece.instruments()]


class SimilarityStats:
    """Running sums of l(i, i + t) for t = 1..max_distance over any number of pieces."""

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE, per_instrument: bool = False):
        if max_distance < 1:
            raise ValueError(f"--max-distance must be at least 1 bar; got {max_distance}.")
        self.max_distance = max_distance
        self.per_instrument = per_instrument
        self.sums = np.zeros(max_distance + 1)  # index t; 0 unused
        self.pairs = np.zeros(max_distance + 1, dtype=np.int64)
        self.by_series: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # instrument -> (sums, pairs)

    def add_piece(self, piece: Piece) -> None:
        for label, sets in series_of(piece, self.per_instrument):
            sums, pairs = self.by_series.setdefault(
                label, (np.zeros(self.max_distance + 1), np.zeros(self.max_distance + 1, dtype=np.int64))
            )
            for t in range(1, min(self.max_distance, len(sets) - 1) + 1):
                for i in range(len(sets) - t):
                    s = bar_similarity(sets[i], sets[i + t])
                    if s is not None:
                        sums[t] += s
                        pairs[t] += 1
                        self.sums[t] += s
                        self.pairs[t] += 1

    @staticmethod
    def _curve(sums: np.ndarray, pairs: np.ndarray) -> dict[str, float | None]:
        return {str(t): (float(sums[t] / pairs[t]) if pairs[t] else None) for t in range(1, len(sums))}

    def curve(self) -> dict[str, float | None]:
        """{"1": L_1, "2": L_2, ...}; None where no pair is that far apart (every piece is shorter)."""
        return self._curve(self.sums, self.pairs)

    def pair_counts(self) -> dict[str, int]:
        return {str(t): int(self.pairs[t]) for t in range(1, self.max_distance + 1)}

    def curves_by_instrument(self) -> dict[str, dict[str, float | None]]:
        return {label: self._curve(s, p) for label, (s, p) in sorted(self.by_series.items(), key=lambda kv: int(kv[0]))}


def similarity_error(
    reference: Mapping[str, float | None], generated: Mapping[str, float | None], max_distance: int | None = None
) -> tuple[float, list[int]]:
    """SE = mean over t of |L_t(ref) - L_t(gen)|, over the distances t <= max_distance that both curves have.

    Returns (SE, the distances used). Raises ValueError when no distance is shared (e.g. one-bar samples)."""
    used = sorted(
        int(t) for t in reference
        if t in generated and reference[t] is not None and generated[t] is not None
        and (max_distance is None or int(t) <= max_distance)
    )
    if not used:
        raise ValueError("the two corpora share no bar distance with a defined L_t (are the pieces one bar long?); "
                         "SE needs pieces of at least two bars.")
    se = sum(abs(reference[str(t)] - generated[str(t)]) for t in used) / len(used)
    return se, used


def mean_of(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None
