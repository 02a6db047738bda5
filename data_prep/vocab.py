"""REMIGEN token strings (`b-1`, `o-12`, `p-60`): value <-> id quantisation, token parsing, and fairseq dict.txt."""
from __future__ import annotations

import math
import os
import re
from functools import lru_cache

from .config import TokenizerConfig
from .constants import (
    BEAT_NOTE_FACTOR,
    DEFAULT_TS,
    DRUM_INSTRUMENT,
    DURATION_GROUPS,
    MAX_BPM,
    MAX_NOTES_PER_BAR,
    MAX_TS_DENOMINATOR,
    MIN_BPM,
    NUM_PITCHES,
    NUM_TEMPOS,
    NUM_VELOCITIES,
    TEMPO_STEPS_PER_OCTAVE,
    TIME_SIGNATURES,
    TS_TO_ID,
    VELOCITY_STEP,
)
from .instruments import LMD6_PROGRAMS

# Family letters in dict order (spec §1.8, general_use_dict.txt): bar, onset, instrument, pitch, duration,
# velocity, time signature, tempo. Each family is one contiguous run in the dictionary.
FAMILIES = ("b", "o", "i", "p", "d", "v", "s", "t")
_TOKEN_RE = re.compile(r"^([a-z])-(\d+)$")


# ---- value <-> id ------------------------------------------------------------------------------------------


def tempo_to_id(bpm: float) -> int:
    """Clamp to [16, 256] BPM, then 12 ids per doubling: round(12 * log2(bpm / 16))."""
    bpm = min(max(float(bpm), MIN_BPM), MAX_BPM)
    return int(round(math.log2(bpm / MIN_BPM) * TEMPO_STEPS_PER_OCTAVE))


def id_to_tempo(k: int) -> float:
    return MIN_BPM * 2 ** (k / TEMPO_STEPS_PER_OCTAVE)


def velocity_to_id(velocity: int) -> int:
    return min(max(int(velocity), 0), 127) // VELOCITY_STEP


def id_to_velocity(k: int) -> int:
    return VELOCITY_STEP * k + VELOCITY_STEP // 2


@lru_cache(maxsize=None)
def duration_tables(positions_per_beat: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(dur_to_id, id_to_dur). Group g covers [(2**g - 1) P, (2**(g+1) - 1) P) positions in steps of 2**g;
    id_to_dur gives each bin's lower edge. dur_to_id has one entry per duration below the last edge + bin."""
    dur_to_id: list[int] = []
    id_to_dur: list[int] = []
    for g in range(DURATION_GROUPS):
        for _ in range(positions_per_beat):
            id_to_dur.append(len(dur_to_id))
            dur_to_id.extend([len(id_to_dur) - 1] * 2**g)
    return tuple(dur_to_id), tuple(id_to_dur)


def duration_to_id(dur_pos: int, positions_per_beat: int) -> int:
    """Duration in grid positions -> d- id; negative counts as 0, longer than the table clamps to the last id."""
    dur_to_id, _ = duration_tables(positions_per_beat)
    return dur_to_id[min(max(int(dur_pos), 0), len(dur_to_id) - 1)]


def id_to_duration(k: int, positions_per_beat: int) -> int:
    """Lower edge of bin k in positions (0 for d-0)."""
    return duration_tables(positions_per_beat)[1][k]


def reduce_time_signature(num: int, den: int) -> tuple[int, int]:
    """Bring a TS into the 254-entry table (spec §1.1): halve both while den > 64 and both are even, then divide
    num by its smallest factor while num > 2 * den. Cases the original cannot handle (odd num with den > 64,
    den not a power of two) are approximated to the nearest table entry instead of raising."""
    num, den = int(num), int(den)
    if num <= 0 or den <= 0:
        return DEFAULT_TS
    while den > MAX_TS_DENOMINATOR and num % 2 == 0 and den % 2 == 0:
        num //= 2
        den //= 2
    while num > MAX_NOTES_PER_BAR * den:
        for f in range(2, num + 1):
            if num % f == 0:
                num //= f
                break
    if (num, den) not in TS_TO_ID:  # ours only: snap to the closest power-of-two denominator <= 64
        p2 = min(MAX_TS_DENOMINATOR, 2 ** max(0, round(math.log2(den))))
        num = min(max(1, round(num * p2 / den)), MAX_NOTES_PER_BAR * p2)
        den = p2
    return num, den


def ts_to_id(ts: tuple[int, int]) -> int:
    return TS_TO_ID[reduce_time_signature(*ts)]


def id_to_ts(k: int) -> tuple[int, int]:
    return TIME_SIGNATURES[k]


def bar_length(ts: tuple[int, int], positions_per_beat: int) -> int:
    """Bar length in positions: num * 4 * P // den (integer division, as the original), at least 1.
    The original gets 0 for e.g. 1/64 at P=12 and then fails an assertion; we use 1 position instead."""
    return max(1, ts[0] * BEAT_NOTE_FACTOR * positions_per_beat // ts[1])


def pitch_to_id(pitch: int, is_drum: bool) -> int:
    return int(pitch) + (NUM_PITCHES if is_drum else 0)


# ---- token strings -----------------------------------------------------------------------------------------


def parse_token(token: str) -> tuple[str, int] | None:
    """'p-60' -> ('p', 60); anything that is not letter-dash-digits -> None."""
    m = _TOKEN_RE.match(token)
    return (m.group(1), int(m.group(2))) if m else None


def instrument_ids(cfg: TokenizerConfig) -> list[int]:
    if cfg.instruments == "lmd6":
        return sorted(LMD6_PROGRAMS)
    return list(range(DRUM_INSTRUMENT + 1))


def family_ranges(cfg: TokenizerConfig) -> dict[str, range | list[int]]:
    """Valid values of each family the encoder can emit under `cfg`."""
    P = cfg.positions_per_beat
    r: dict[str, range | list[int]] = {
        "b": range(1, 2),
        "o": range(BEAT_NOTE_FACTOR * MAX_NOTES_PER_BAR * P),  # a bar is at most 8 beats long
        "i": instrument_ids(cfg),
        "p": range(2 * NUM_PITCHES),
        "d": range(DURATION_GROUPS * P),
        "v": range(NUM_VELOCITIES),
        "s": range(len(TIME_SIGNATURES)),
        "t": range(NUM_TEMPOS),
    }
    if cfg.ignore_ts:
        del r["s"]
    return r


def build_vocab(cfg: TokenizerConfig = TokenizerConfig()) -> list[str]:
    """Every token the encoder can emit under `cfg`, families contiguous, in the order b o i p d v s t."""
    ranges = family_ranges(cfg)
    return [f"{fam}-{v}" for fam in FAMILIES if fam in ranges for v in ranges[fam]]


def write_dict(path: str | os.PathLike, cfg: TokenizerConfig = TokenizerConfig()) -> list[str]:
    """Write a fairseq dict.txt ("<symbol> <count>" per line, read by Dictionary.add_from_file); fairseq adds
    <s> <pad> </s> <unk> itself. Returns the symbols written."""
    vocab = build_vocab(cfg)
    with open(path, "w", encoding="utf-8") as f:
        for tok in vocab:
            f.write(f"{tok} 1\n")
    return vocab


FAIRSEQ_OVERWRITE_FLAG = " #fairseq:overwrite"  # an optional third field of a fairseq dict.txt line


def read_dict(path: str | os.PathLike) -> list[str]:
    """Symbols of a dict.txt in file order, split as fairseq's ``Dictionary.add_from_file`` splits a line
    (``<symbol> <count>``, optionally followed by `` #fairseq:overwrite``); no fairseq needed."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip()
            if line.endswith(FAIRSEQ_OVERWRITE_FLAG):
                line = line[: -len(FAIRSEQ_OVERWRITE_FLAG)]
            if line.strip():
                out.append(line.rsplit(" ", 1)[0])
    return out
