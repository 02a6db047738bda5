"""Which token family may follow which (REMIGEN2 and REMIGEN): `count_errors` for tests and sampling reports."""
from __future__ import annotations

from .config import TokenizerConfig
from .constants import DEFAULT_POSITIONS_PER_BEAT, DEFAULT_TS, DRUM_INSTRUMENT, NUM_PITCHES, TIME_SIGNATURES
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


class GrammarState:
    """Where a REMIGEN sequence stands, and what its next token may be: the one statement of the rules beyond
    ``FOLLOWS``. ``count_errors`` steps one through a token list; the sampling grammar mask
    (``museformer_tools/grammar_mask.py``) keeps one per piece and turns ``onset_range`` / ``insts`` /
    ``drum_pitches_next`` into a mask over the dictionary.

    Rules: onsets strictly increase within a bar (and stay inside the bar's length when the config writes ``s-``
    tokens); an instrument at most once per onset; drum pitches (>= 128) only under ``i-128`` and the reverse.
    """

    __slots__ = ("prev", "last_onset", "insts", "inst", "ts", "positions_per_beat", "bar_length_known")

    def __init__(self, cfg: TokenizerConfig | None = None):
        self.prev = "^"  # family of the previous token ("^" = start of the sequence)
        self.last_onset = -1  # onset of the current bar so far (-1 = none yet)
        self.insts: set[int] = set()  # instruments already used at the current onset
        self.inst: int | None = None  # the current instrument
        self.ts = DEFAULT_TS
        self.positions_per_beat = cfg.positions_per_beat if cfg else DEFAULT_POSITIONS_PER_BEAT
        self.bar_length_known = cfg is not None and not cfg.ignore_ts  # s- tokens give each bar its length

    def copy(self) -> "GrammarState":
        new = GrammarState.__new__(GrammarState)
        for name in self.__slots__:
            setattr(new, name, getattr(self, name))
        new.insts = set(self.insts)
        return new

    def onset_range(self) -> tuple[int, int | None]:
        """(low, high): the next onset ``o`` must satisfy low <= o < high (high None = no upper limit)."""
        high = bar_length(self.ts, self.positions_per_beat) if self.bar_length_known else None
        return self.last_onset + 1, high

    def drum_pitches_next(self) -> bool | None:
        """True: the next pitches must be drum pitches (>= 128); False: must not be; None: no instrument yet."""
        return None if self.inst is None else self.inst == DRUM_INSTRUMENT

    def value_error(self, fam: str, val: int) -> bool:
        """True when token ``fam-val`` breaks a rule beyond the family order at this point."""
        if fam == "o":
            low, high = self.onset_range()
            return val < low or (high is not None and val >= high)
        if fam == "i":
            return val in self.insts
        if fam == "p":
            drums = self.drum_pitches_next()
            return drums is not None and (val >= NUM_PITCHES) != drums
        return False

    def advance(self, fam: str, val: int) -> None:
        """Step over token ``fam-val``."""
        if fam == "b":
            self.last_onset, self.insts = -1, set()
        elif fam == "s":
            self.ts = id_to_ts(val) if val < len(TIME_SIGNATURES) else self.ts  # out-of-table ids keep the bar length
        elif fam == "o":
            self.last_onset, self.insts = val, set()
        elif fam == "i":
            self.insts.add(val)
            self.inst = val
        self.prev = fam


def count_errors(tokens: list[str] | str, cfg: TokenizerConfig | None = None) -> int:
    """Number of grammar errors in `tokens` (0 for any encoder output).

    One error per: unknown or special token; a family that may not follow the previous one (FOLLOWS); a token
    that breaks a rule of ``GrammarState`` (onset order and bar length, repeated instrument, drum / non-drum
    pitch). With `cfg`, values outside the config's vocabulary count too. A sequence that stops mid-bar is not an
    error (sampling may cut).
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    ranges = {k: set(v) for k, v in family_ranges(cfg).items()} if cfg else None
    errors = 0
    state = GrammarState(cfg)
    for tok in tokens:
        parsed = parse_token(tok)
        if parsed is None or parsed[0] not in FOLLOWS:
            errors += 1
            continue
        fam, val = parsed
        if ranges is not None and (fam not in ranges or val not in ranges[fam]):
            errors += 1  # a wrong value, but the family still counts for the structure
            state.prev = fam
            continue
        errors += (fam not in FOLLOWS[state.prev]) + state.value_error(fam, val)
        state.advance(fam, val)
    return errors
