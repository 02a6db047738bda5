"""Which token family may follow which (REMIGEN2 and REMIGEN): `count_errors` for tests and sampling reports."""
from __future__ import annotations

from .config import TokenizerConfig
from .constants import DRUM_INSTRUMENT, NUM_PITCHES
from .vocab import bar_length, family_ranges, id_to_ts, parse_token

# family -> families allowed next. "^" is the start of the sequence. Covers both encodings:
#   REMIGEN2 bar: [s] t (o i (p d v)+ (i (p d v)+)*)* b      REMIGEN bar: [s] (o t i (p d v)+ ...)* b
FOLLOWS = {
    "^": {"s", "t", "o", "b"},
    "b": {"s", "t", "o", "b"},
    "s": {"t", "o", "b"},
    "t": {"o", "b", "i"},
    "o": {"i", "t"},
    "i": {"p"},
    "p": {"d"},
    "d": {"v"},
    "v": {"p", "i", "o", "b"},
}


def count_errors(tokens: list[str] | str, cfg: TokenizerConfig | None = None) -> int:
    """Number of grammar errors in `tokens` (0 for any encoder output).

    One error per: unknown or special token; a family that may not follow the previous one (FOLLOWS); an
    onset not after the previous onset of its bar; an instrument repeated within one onset; a drum pitch
    (>= 128) under a non-drum instrument or the reverse. With `cfg`, values outside the config's vocabulary and
    onsets beyond the bar's length (when the config writes s- tokens) count too. A sequence that stops mid-bar is not an error (sampling may cut).
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    P = cfg.positions_per_beat if cfg else 12
    ranges = {k: set(v) for k, v in family_ranges(cfg).items()} if cfg else None
    errors = 0
    prev = "^"
    last_onset = -1
    insts_here: set[int] = set()
    inst = None
    ts = (4, 4)
    for tok in tokens:
        parsed = parse_token(tok)
        if parsed is None or parsed[0] not in FOLLOWS:
            errors += 1
            continue
        fam, val = parsed
        if ranges is not None and (fam not in ranges or val not in ranges[fam]):
            errors += 1  # a wrong value, but the family still counts for the structure
            prev = fam
            continue
        if fam not in FOLLOWS[prev]:
            errors += 1
        if fam == "b":
            last_onset, insts_here = -1, set()
        elif fam == "s":
            ts = id_to_ts(val) if val < 254 else ts
        elif fam == "o":
            if val <= last_onset or (cfg is not None and not cfg.ignore_ts and val >= bar_length(ts, P)):
                errors += 1
            last_onset, insts_here = val, set()
        elif fam == "i":
            if val in insts_here:
                errors += 1
            insts_here.add(val)
            inst = val
        elif fam == "p":
            if inst is not None and (val >= NUM_PITCHES) != (inst == DRUM_INSTRUMENT):
                errors += 1
        prev = fam
    return errors
