"""Musical controls for sampling (instruments, time signature, tempo, exact bar count) as a mask on the grammar mask.

``museformer-sample --instruments 0,25,33,128 --time-signature 3/4 --tempo 120 --bars 16`` builds one
``Controls`` (checked against the dictionary and the tokenizer config: a control the vocabulary cannot express is a
``ControlError``) and one ``ControlMask``, which has the interface of ``GrammarMask`` (``reset`` / ``update`` /
``select`` / ``mask``) and allows only what both the grammar and the controls allow:

* ``--instruments``: only these ``i-`` tokens;
* ``--time-signature``: every sampled bar starts with this one ``s-`` token (both encodings write ``s-`` at the
  start of every bar);
* ``--tempo``: every ``t-`` token has this value, placed where the encoder puts it: REMIGEN2 once at the start of
  every bar (after its ``s-``), REMIGEN right after every onset ``o-``;
* ``--bars N``: ``</s>`` is forbidden before the N-th ``b-1`` (prompt included) and the piece ends right after it.
  Near ``--max-length`` only tokens after which N bars can still be closed in the tokens left are allowed (the
  shortest completion is computed on the family graph below), so every piece has exactly N bars.

The controls apply to the sampled tokens; a prompt is kept as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch

from data_prep.config import TokenizerConfig
from data_prep.constants import MAX_BPM, MIN_BPM, TS_TO_ID
from data_prep.grammar import FOLLOWS
from data_prep.vocab import family_ranges, id_to_tempo, tempo_to_id

from .grammar_mask import FAMILY_CODES, GrammarMask

BAR_STARTS = ("^", "b")  # families after which a new bar begins ("^" = start of the song)
_FAR = 10**9  # "cannot close a bar from here" in token counts


class ControlError(ValueError):
    """A control the user asked for that this vocabulary / tokenizer config cannot express (one line)."""


@dataclass(frozen=True)
class Controls:
    instruments: Optional[Tuple[int, ...]] = None  # allowed i- values (None = any)
    time_signature: Optional[Tuple[int, int]] = None  # (num, den) of every sampled bar (None = any)
    tempo_id: Optional[int] = None  # value of every sampled t- token (None = any)
    bars: Optional[int] = None  # the piece has exactly this many bars, prompt included (None = no target)

    def active(self) -> bool:
        return any(v is not None for v in (self.instruments, self.time_signature, self.tempo_id, self.bars))

    def describe(self) -> str:
        """One line for the sampling summary, e.g. 'instruments 0,25; time signature 3/4; tempo t-35 (120.8 BPM)'."""
        parts = []
        if self.instruments is not None:
            parts.append("instruments " + ",".join(map(str, self.instruments)))
        if self.time_signature is not None:
            parts.append(f"time signature {self.time_signature[0]}/{self.time_signature[1]}")
        if self.tempo_id is not None:
            parts.append(f"tempo t-{self.tempo_id} ({id_to_tempo(self.tempo_id):.1f} BPM)")
        if self.bars is not None:
            parts.append(f"{self.bars} bars")
        return "; ".join(parts) or "none"


# ---- parsing and checking against the vocabulary ----------------------------------------------------------


def parse_instruments(text: str) -> Tuple[int, ...]:
    """'0,25,33,128' -> (0, 25, 33, 128) (sorted, without duplicates)."""
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 128 for v in values):
        raise ControlError(f"--instruments expects comma-separated MIDI programs 0-127 and 128 for drums, like "
                           f"0,25,33,128; got {text!r}")
    return tuple(values)


def parse_time_signature(text: str) -> Tuple[int, int]:
    """'3/4' -> (3, 4); the pair must be in REMIGEN's time-signature table (no silent reduction)."""
    num_text, _, den_text = text.partition("/")
    try:
        ts = (int(num_text), int(den_text))
    except ValueError:
        raise ControlError(f"--time-signature expects NUM/DEN like 3/4 or 6/8; got {text!r}") from None
    if ts not in TS_TO_ID:
        raise ControlError(f"--time-signature {text} cannot be written as a REMIGEN s- token: the denominator must "
                           "be a power of two from 1 to 64 and the numerator 1 to twice the denominator")
    return ts


def tempo_token_id(bpm: float) -> int:
    """The t- value of ``bpm`` (nearest of REMIGEN's 12 steps per doubling); outside 16-256 BPM is an error."""
    if not (isinstance(bpm, (int, float)) and math.isfinite(bpm) and bpm > 0):
        raise ControlError(f"--tempo expects a positive number of beats per minute, like 120; got {bpm!r}")
    if not MIN_BPM <= bpm <= MAX_BPM:
        raise ControlError(f"--tempo {bpm:g} cannot be written as a REMIGEN t- token: tempo tokens cover "
                           f"{MIN_BPM:g} to {MAX_BPM:g} BPM")
    return tempo_to_id(bpm)


def build_controls(symbols: Sequence[str], cfg: TokenizerConfig, vocab_source: str, instruments: Optional[str] = None,
                   time_signature: Optional[str] = None, tempo: Optional[float] = None,
                   bars: Optional[int] = None) -> Controls:
    """Parse the control flags and check that the dictionary ``symbols`` and the tokenizer config ``cfg`` (both
    from ``vocab_source``: a data dir's dict.txt or a checkpoint's saved dictionary) can express each of them. Raises ``ControlError`` naming the flag, the missing
    token and the fix."""
    in_dict = set(symbols)
    ranges = family_ranges(cfg)

    def expressible(fam: str, val: int) -> bool:
        return f"{fam}-{val}" in in_dict and fam in ranges and val in ranges[fam]

    inst = None
    if instruments is not None:
        inst = parse_instruments(instruments)
        missing = [v for v in inst if not expressible("i", v)]
        if missing:
            known = [v for v in ranges["i"] if expressible("i", v)]
            known_text = ", ".join(map(str, known)) if len(known) <= 12 else f"{known[0]}-{known[-1]}"
            verb = "is" if len(missing) == 1 else "are"
            raise ControlError(f"--instruments {instruments}: {', '.join(f'i-{v}' for v in missing)} {verb} not in "
                               f"the vocabulary of {vocab_source} (its instruments: {known_text}); choose among those")
    ts = None
    if time_signature is not None:
        ts = parse_time_signature(time_signature)
        if cfg.ignore_ts:
            raise ControlError(f"--time-signature needs s- tokens, but the tokenizer config of {vocab_source} has ignore_ts "
                               "(its pieces carry no time signature); drop the flag or use a data dir built "
                               "without --ignore-ts")
        if not expressible("s", TS_TO_ID[ts]):
            raise ControlError(f"--time-signature {time_signature}: s-{TS_TO_ID[ts]} is not in {vocab_source}")
    tempo_id = None
    if tempo is not None:
        tempo_id = tempo_token_id(tempo)
        if not expressible("t", tempo_id):
            raise ControlError(f"--tempo {tempo:g}: t-{tempo_id} is not in {vocab_source}")
    if bars is not None and bars < 1:
        raise ControlError(f"--bars must be at least 1, got {bars}")
    return Controls(inst, ts, tempo_id, bars)


def add_arguments(group) -> None:
    """The control flags of museformer-sample (an argparse parser or group)."""
    group.add_argument("--instruments", metavar="LIST",
                       help="only these instruments may play: MIDI programs 0-127 and 128 for drums, comma-separated, "
                       "e.g. 0,25,33,128 (each must be an i- token of the dictionary) (default: any)")
    group.add_argument("--time-signature", metavar="NUM/DEN",
                       help="every sampled bar gets this time signature (its s- token), e.g. 3/4 or 6/8; needs a "
                       "data dir whose tokenizer writes s- tokens (not --ignore-ts) (default: any)")
    group.add_argument("--tempo", type=float, metavar="BPM",
                       help="every tempo token is this tempo in beats per minute, 16-256 (REMIGEN2: one t- per bar; "
                       "REMIGEN: one after every onset); written as the nearest t- value (default: any)")
    group.add_argument("--bars", type=int, metavar="N",
                       help="exactly N bars per piece, prompt included, then end of song (</s>); tokens are chosen so "
                       "that N bars fit in --max-length (default: no exact bar count)")


def controls_from_args(args, symbols: Sequence[str], cfg: TokenizerConfig, vocab_source: str) -> Controls:
    """``build_controls`` from the parsed flags of ``add_arguments``."""
    return build_controls(symbols, cfg, vocab_source, instruments=args.instruments, time_signature=args.time_signature,
                          tempo=args.tempo, bars=args.bars)


# ---- the family graph under the controls ------------------------------------------------------------------


def family_graph(cfg: TokenizerConfig, controls: Controls) -> Dict[str, Set[str]]:
    """Family -> families that may follow it under the grammar (``FOLLOWS``) and the controls' placement rules."""
    g = {f: set(nxt) for f, nxt in FOLLOWS.items()}
    if cfg.ignore_ts:
        for nxt in g.values():
            nxt.discard("s")
    if controls.time_signature is not None:
        for f in BAR_STARTS:
            g[f] = {"s"}
    if controls.tempo_id is not None:
        if cfg.encoding == "remigen2":  # bar: [s] t (o i (p d v)+ ...)* b
            for f in BAR_STARTS:
                g[f] &= {"s", "t"}
            g["s"] &= {"t"}
            g["o"].discard("t")
            g["t"] &= {"o", "b"}
        else:  # REMIGEN bar: [s] (o t i (p d v)+ ...)* b
            for f in BAR_STARTS + ("s",):
                g[f].discard("t")
            g["o"] &= {"t"}
            g["t"] &= {"i"}
    return g


def tokens_to_close(graph: Dict[str, Set[str]]) -> Dict[str, int]:
    """Family f -> the fewest tokens that end the current bar after a token of family f (its b-1 included)."""
    dist = {f: _FAR for f in graph}
    for _ in range(len(graph) + 1):  # Bellman-Ford on a graph of 10 nodes
        for f, nxt in graph.items():
            best = min([1 if n == "b" else dist[n] + 1 for n in nxt if n == "b" or n in dist] or [_FAR])
            dist[f] = min(dist[f], best)
    return dist


class ControlMask:
    """``GrammarMask`` with the controls on top; same interface (``reset``, ``update``, ``select``, ``mask``)."""

    def __init__(self, grammar: GrammarMask, controls: Controls, cfg: TokenizerConfig, bar_id: int,
                 max_length: int):
        self.grammar, self.controls, self.bar_id, self.max_length = grammar, controls, bar_id, max_length
        fam, val, eos = grammar.fam, grammar.val, grammar.eos
        V = fam.numel()
        code_of = {code: f for f, code in FAMILY_CODES.items()}
        self.graph = family_graph(cfg, controls)
        # (F, V): row = family code of the previous token; True = the id's family may follow (</s> left to the grammar)
        self._fam_ok = torch.zeros(len(FAMILY_CODES), V, dtype=torch.bool)
        for code in range(len(FAMILY_CODES)):
            nxt = [FAMILY_CODES[f] for f in self.graph[code_of[code]]]
            self._fam_ok[code] = torch.isin(fam, torch.tensor(nxt, dtype=torch.long))
        self._fam_ok[:, eos] = True
        # (V,): value restrictions of the controls
        ok = torch.ones(V, dtype=torch.bool)
        is_fam = {f: fam.eq(FAMILY_CODES[f]) for f in "ist"}
        if controls.instruments is not None:
            ok &= ~is_fam["i"] | torch.isin(val, torch.tensor(controls.instruments))
        if controls.time_signature is not None:
            ok &= ~is_fam["s"] | val.eq(TS_TO_ID[controls.time_signature])
        if controls.tempo_id is not None:
            ok &= ~is_fam["t"] | val.eq(controls.tempo_id)
        self._value_ok = ok
        # fewest tokens to close the bar after each id; an empty bar costs `bar_cost` from a bar start
        close = tokens_to_close(self.graph)
        self.bar_cost = close["b"]
        self._close_after = torch.full((V,), _FAR, dtype=torch.long)
        for f, code in FAMILY_CODES.items():
            self._close_after[fam.eq(code)] = close[f]
        self._is_bar = torch.arange(V).eq(bar_id)
        self._close = close
        self.length: List[int] = []  # tokens of each piece so far (prompt included)
        self.bars: List[int] = []  # b-1 tokens of each piece so far

    def reset(self, batch_size: int) -> None:
        self.grammar.reset(batch_size)
        self.length, self.bars = [0] * batch_size, [0] * batch_size

    def select(self, order: Sequence[int]) -> None:
        self.grammar.select(order)
        self.length = [self.length[i] for i in order]
        self.bars = [self.bars[i] for i in order]

    def update(self, ids: Sequence[int]) -> None:
        self.grammar.update(ids)
        for r, idx in enumerate(ids):
            self.length[r] += 1
            self.bars[r] += int(idx) == self.bar_id

    def tokens_needed(self) -> List[int]:
        """Per piece: the fewest tokens that complete ``controls.bars`` bars from its current state (0 = none)."""
        if self.controls.bars is None:
            return [0] * len(self.bars)
        out = []
        for st, done in zip(self.grammar.states, self.bars):
            left = self.controls.bars - done
            out.append(0 if left <= 0 else self._close[st.prev] + (left - 1) * self.bar_cost)
        return out

    def mask(self) -> torch.Tensor:
        """Bool (B, V), True = allowed next: the grammar's mask and the controls'."""
        m = self.grammar.mask()
        prev = torch.tensor([FAMILY_CODES[st.prev] for st in self.grammar.states], dtype=torch.long)
        m &= self._fam_ok[prev] & self._value_ok
        if self.controls.bars is not None:
            bars_left = self.controls.bars - torch.tensor(self.bars)[:, None]  # (B, 1)
            assert bool(bars_left.ge(1).all()), "a piece with all its bars must have left the batch"
            tokens_left = self.max_length - torch.tensor(self.length)[:, None]  # (B, 1) tokens still allowed
            # tokens needed after each candidate: a b-1 leaves bars_left - 1 empty bars, any other id first closes
            # the current bar
            need = torch.where(self._is_bar, (bars_left - 1) * self.bar_cost,
                               self._close_after + (bars_left - 1) * self.bar_cost)  # (B, V)
            m &= need + 1 <= tokens_left
            m[:, self.grammar.eos] = False  # the piece ends right after its last bar, never before
        return m
