"""Grammar mask for sampling: which dictionary ids may come next so that the sequence is well-formed REMIGEN.

One ``data_prep.grammar.GrammarState`` per piece (the state machine ``count_errors`` steps too, so the rules are
stated once), turned into a mask over dictionary ids, so a masked sample has ``count_errors(tokens, cfg) == 0``:

* family order (``d-`` after ``p-``, ``v-`` after ``d-``, ``p-`` after ``i-``, ... = ``FOLLOWS``);
* onsets strictly increasing within a bar (and inside the bar's length when the config writes ``s-`` tokens);
* an instrument at most once per onset; drum pitches (>= 128) only under ``i-128`` and the reverse;
* values inside the tokenizer config's vocabulary (when a config is given);
* ``</s>`` (end of song) only right after a ``b-1``, so a song never stops inside a bar.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from data_prep.config import TokenizerConfig
from data_prep.constants import NUM_PITCHES
from data_prep.grammar import FOLLOWS, GrammarState
from data_prep.vocab import family_ranges, parse_token

FAMILY_CODES = {fam: n for n, fam in enumerate(sorted(FOLLOWS))}  # "^" and the token families
_NONE = -1  # code of ids that are never allowed by the grammar (special symbols, unknown families)


class GrammarMask:
    """Per-sample REMIGEN state; ``mask()`` gives the allowed next ids (B, V), ``update()`` feeds chosen ids."""

    def __init__(self, symbols: Sequence[str], eos: int, cfg: Optional[TokenizerConfig] = None):
        self.cfg = cfg
        self.eos = eos
        ranges = {k: set(v) for k, v in family_ranges(cfg).items()} if cfg else None
        fam = torch.full((len(symbols),), _NONE, dtype=torch.long)
        val = torch.full((len(symbols),), -1, dtype=torch.long)
        self._parsed: List[Optional[tuple]] = []
        for idx, sym in enumerate(symbols):
            parsed = parse_token(sym)
            ok = parsed is not None and parsed[0] in FOLLOWS and parsed[0] != "^"
            if ok and ranges is not None and (parsed[0] not in ranges or parsed[1] not in ranges[parsed[0]]):
                ok = False
            self._parsed.append(parsed if ok else None)
            if ok:
                fam[idx], val[idx] = FAMILY_CODES[parsed[0]], parsed[1]
        self.fam, self.val = fam, val
        # family -> bool (V,) of the ids whose family may follow it
        self._follows = {
            prev: torch.isin(fam, torch.tensor([FAMILY_CODES[f] for f in nxt])) for prev, nxt in FOLLOWS.items()
        }
        self._is = {f: fam.eq(code) for f, code in FAMILY_CODES.items()}
        self._drum_pitch = self._is["p"] & val.ge(NUM_PITCHES)
        self.states: List[GrammarState] = []

    def reset(self, batch_size: int) -> None:
        self.states = [GrammarState(self.cfg) for _ in range(batch_size)]

    def select(self, order: Sequence[int]) -> None:
        """Keep / reorder the samples like the KV cache (``order[b]`` = old index of new sample b)."""
        self.states = [self.states[i].copy() for i in order]

    def mask_one(self, st: GrammarState) -> torch.Tensor:
        """Bool (V,): True = allowed next (``st.value_error`` over the whole dictionary at once)."""
        m = self._follows[st.prev].clone()
        low, high = st.onset_range()
        bad_onset = self.val.lt(low)
        if high is not None:
            bad_onset |= self.val.ge(high)
        m &= ~(self._is["o"] & bad_onset)
        if st.insts:
            m &= ~(self._is["i"] & torch.isin(self.val, torch.tensor(sorted(st.insts))))
        drums = st.drum_pitches_next()
        if drums is not None:
            m &= ~(self._is["p"] & (self._drum_pitch if not drums else ~self._drum_pitch))
        if st.prev == "b":
            m[self.eos] = True
        return m

    def mask(self) -> torch.Tensor:
        """Bool (B, V) for every sample."""
        return torch.stack([self.mask_one(st) for st in self.states])

    def update(self, ids: Sequence[int]) -> None:
        """Advance every sample by one chosen id."""
        for st, idx in zip(self.states, ids):
            self.advance(st, int(idx))

    def advance(self, st: GrammarState, idx: int) -> None:
        parsed = self._parsed[idx] if 0 <= idx < len(self._parsed) else None
        if parsed is None:
            return  # special or unknown id: count_errors counts it and keeps the previous family
        st.advance(*parsed)
