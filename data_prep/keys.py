"""Pitch normalisation to C major / A minor (spec §1.5): detect the key, return the transposition."""
from __future__ import annotations

from typing import Sequence

import numpy as np

MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11)
MINOR_STEPS = (0, 2, 3, 5, 7, 8, 10)  # natural minor


def key_profile() -> np.ndarray:
    """24 x 12 matrix of +-1 scale membership: rows 0-11 major on C..B, rows 12-23 natural minor on C..B."""
    prof = -np.ones((24, 12), dtype=np.int64)
    for tonic in range(12):
        for step in MAJOR_STEPS:
            prof[tonic, (tonic + step) % 12] = 1
        for step in MINOR_STEPS:
            prof[12 + tonic, (tonic + step) % 12] = 1
    return prof


_PROFILE = key_profile().astype(np.int64)


def pitch_class_histogram(pitches: Sequence[int], weights: Sequence[int] | None = None) -> np.ndarray:
    """Pitch-class histogram as exact integers (note counts, or summed integer weights)."""
    pcs = np.asarray(pitches, dtype=np.int64) % 12
    hist = np.zeros(12, dtype=np.int64)
    np.add.at(hist, pcs, 1 if weights is None else np.asarray(weights, dtype=np.int64))
    return hist


def detect_key(pitches: Sequence[int], weights: Sequence[int] | None = None) -> int:
    """Key index 0-11 (major on C..B) or 12-23 (minor on C..B), chosen as the original does: the first two
    arg-max keys of the profile score are taken as (major, minor) -- relative keys always tie -- and the minor
    one wins only if its tonic pitch class weighs strictly more than the major tonic.

    The original normalises the histogram to floats first; we score exact integers instead (same arg-max up to
    float rounding, but ties are real ties on every platform)."""
    hist = pitch_class_histogram(pitches, weights)
    scores = _PROFILE @ hist
    best = np.flatnonzero(scores == scores.max())
    major_index, minor_index = int(best[0]), int(best[1])  # >= 2 entries always: relative keys tie exactly
    if hist[major_index % 12] < hist[minor_index % 12]:
        return minor_index
    return major_index


def key_shift(key: int) -> int:
    """Semitones that move `key` to C major (keys 0-11: -k) or A minor (keys 12-23: 21 - k)."""
    return -key if key <= 11 else 21 - key


def fit_shift_in_range(shift: int, lowest: int, highest: int) -> int:
    """Move `shift` by octaves until lowest..highest fits 0..127; 0 if no octave makes it fit."""
    while lowest + shift < 0:
        shift += 12
    while highest + shift > 127:
        shift -= 12
    if lowest + shift < 0 or highest + shift > 127:
        return 0
    return shift


def normalization_shift(
    pitches: Sequence[int], durations: Sequence[int], velocities: Sequence[int], weighting: str = "count"
) -> int:
    """Transposition (semitones) for the non-drum notes given, 0 when there are none.

    weighting="count" reproduces the original (its unweighted pass is the one that decides); "duration_velocity"
    weights each note by max(duration, 1 position) x velocity. Callers pass *quantised* durations and velocities
    (bin lower edges), so that a decoded file gives the same weights and normalisation is idempotent.
    """
    if len(pitches) == 0:
        return 0
    weights = None
    if weighting == "duration_velocity":
        weights = [max(int(d), 1) * int(v) for d, v in zip(durations, velocities)]
    elif weighting != "count":
        raise ValueError(f"pitch_weighting must be 'count' or 'duration_velocity'; got {weighting!r}.")
    shift = key_shift(detect_key(pitches, weights))
    return fit_shift_in_range(shift, min(pitches), max(pitches))
