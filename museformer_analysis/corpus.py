"""A corpus (files and folders) -> the stats dict of `museformer-analyze stats`: L_t, pair counts, metrics, skips.

The dict is what `--json` writes and what `se` and `plot` read back:
    {"files": N, "skipped": {reason: count}, "similarity": {"1": L_1, ...}, "pairs": {"1": n_1, ...},
     "metrics": {...}, "settings": {...}, "inputs": [...]}
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from data_prep.config import TokenizerConfig
from data_prep.constants import DEFAULT_POSITIONS_PER_BEAT

from .metrics import MetricsStats
from .piece import Piece, find_inputs, load_piece, skip_reason
from .similarity import DEFAULT_MAX_DISTANCE, SimilarityStats

STATS_FORMAT = "museformer-analyze stats v1"  # marks a JSON that `se` and `plot` can take instead of a folder


def corpus_stats(
    paths: list[str],
    max_distance: int = DEFAULT_MAX_DISTANCE,
    per_instrument: bool = False,
    positions_per_beat: int = DEFAULT_POSITIONS_PER_BEAT,
    remove_empty_bars: bool = True,
    desc: str = "stats",
    on_piece: Callable[[str, Piece], None] | None = None,
) -> dict:
    """Read every MIDI / token file under `paths` and return the stats dict. Unreadable files are counted by
    reason in "skipped", never raised. `on_piece(path, piece)` is called for every file analysed (the report
    draws each piece from it, so no file is read twice). Raises FileNotFoundError for a path that does not exist
    and ValueError when no MIDI or token file is found at all."""
    TokenizerConfig(positions_per_beat=positions_per_beat)  # a bad grid is the caller's error, not a skipped file
    files, left_out = find_inputs(paths)
    if not files:
        raise ValueError(f"no MIDI (*.mid, *.midi) or token (*.mid.txt) files under {', '.join(paths)}.")
    sim = SimilarityStats(max_distance, per_instrument)
    metrics = MetricsStats()
    skipped: Counter = Counter(left_out)
    analysed = 0
    for path in tqdm(files, desc=desc, unit="file", disable=None):
        try:
            piece = load_piece(path, positions_per_beat, remove_empty_bars)
        except ValueError as err:  # MidiEncodeError / PieceError: the reason is counted, the file skipped
            skipped[skip_reason(err)] += 1
            continue
        sim.add_piece(piece)
        metrics.add_piece(piece)
        analysed += 1
        if on_piece is not None:
            on_piece(path, piece)
    out = {
        "format": STATS_FORMAT,
        "inputs": [os.fspath(p) for p in paths],
        "files": analysed,
        "skipped": dict(skipped.most_common()),
        "settings": {"max_distance": max_distance, "per_instrument": per_instrument,
                     "positions_per_beat": positions_per_beat, "remove_empty_bars": remove_empty_bars},
        "similarity": sim.curve(),
        "pairs": sim.pair_counts(),
        "metrics": metrics.summary(),
    }
    if per_instrument:
        out["similarity_by_instrument"] = sim.curves_by_instrument()
    return out


def is_stats_json(path: str) -> bool:
    return path.lower().endswith(".json") and Path(path).is_file()


def load_stats_json(path: str) -> dict:
    """A JSON written by `museformer-analyze stats --json`; ValueError for anything else."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e}); give a folder of MIDI files or a `stats --json` output.")
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT:
        raise ValueError(f"{path}: not written by `museformer-analyze stats --json` (no \"format\": "
                         f"\"{STATS_FORMAT}\"); give a folder of MIDI files or such a JSON.")
    return data


def stats_of(path_or_paths: str | list[str], **settings) -> dict:
    """A stats JSON as it is, or the stats of files/folders computed with `settings` (see corpus_stats)."""
    paths = [path_or_paths] if isinstance(path_or_paths, str) else list(path_or_paths)
    if len(paths) == 1 and is_stats_json(paths[0]):
        data = load_stats_json(paths[0])
        want = {k: v for k, v in settings.items() if k in ("per_instrument", "positions_per_beat", "remove_empty_bars")}
        have = data.get("settings", {})
        differ = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if differ:
            what = ", ".join(f"{k}={a} there but {b} here" for k, (a, b) in differ.items())
            raise ValueError(f"{paths[0]} was computed with other settings ({what}); rerun `stats` with the same "
                             "flags or pass the folder instead.")
        if settings.get("max_distance", 0) > have.get("max_distance", 0):
            raise ValueError(f"{paths[0]} holds L_t up to t = {have.get('max_distance')} only; --max-distance "
                             f"{settings['max_distance']} needs `stats` rerun with that --max-distance.")
        return data
    return corpus_stats(paths, **settings)
