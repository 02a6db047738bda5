"""Bar layout: the single shared definition of which bar each token is in and which past bars it sees.

Used by the dataset (training / evaluation), by both attention implementations and by incremental sampling,
so that "which bar is this token in" is computed in exactly one place (spec §2.1, §2.3, §3).

Conventions (batch-first, all tensors on the tokens' device):
- The regular stream is ``[BOS] + music tokens`` (fairseq's ``</s>`` moved to the front). Position 0 is the
  *prefix*; it has bar id 0. Bar 1 starts right AFTER the BOS (the original's training path let the BOS belong
  to bar 1 and so see bar 1's future tokens, spec §2.6; we use the inference convention everywhere).
- A bar ends with its ``b-1`` token. Bar ids are 1-based; padding positions get bar id ``PAD_BAR = -1``.
- A bar is *complete* when its ``b-1`` is present; only complete bars get a summary token (one per bar, K = 1).
  Summary slot ``j`` (0-based) belongs to bar ``j + 1``.
- Bar-selection matrices are indexed ``[query_bar, key_bar]`` with bar ids ``0..num_bars`` (row/column 0 = prefix,
  always False). ``fine[i, j]``: bar i sees bar j token by token; ``coarse[i, j]``: bar i sees bar j's summary.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import torch

PAD_BAR = -1
BAR_SYMBOL = "b-1"  # REMIGEN end-of-bar token (spec §1.1); its index is looked up in dict.txt, never hard-coded

# A range command (spec §2.3): a tuple of items; an int k selects offset δ = k exactly, a pair (a, b) selects the
# half-open range a <= δ < b, None as a bound means "unbounded". None as the whole command selects nothing.
RangeItem = Union[int, Tuple[Optional[int], Optional[int]]]
RangeCommand = Optional[Tuple[RangeItem, ...]]

# The paper's bar selection (spec §2.3): fine = previous 1, 2, 4, 8, 12, 16, 24, 32 bars; coarse = all others.
MUSEFORMER_FINE: RangeCommand = ((-2, 0), -4, -8, -12, -16, -24, -32)
MUSEFORMER_COARSE: RangeCommand = ((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3)

# Named presets: (fine, coarse). `full` is plain causal attention over every previous token (the Music
# Transformer-style baseline without relative positions); `recent8` is the paper's "w/o bar selection" ablation;
# `no-coarse` is its "w/o coarse-grained" ablation.
SCHEME_PRESETS = {
    "museformer": (MUSEFORMER_FINE, MUSEFORMER_COARSE),
    "full": (((None, 0),), None),
    "recent8": (((-8, 0),), ((None, -8),)),
    "no-coarse": (MUSEFORMER_FINE, None),
}


def parse_range_command(spec: Union[str, RangeCommand]) -> RangeCommand:
    """Parse a range command, accepting the original's nested-tuple syntax.

    ``'((((-2, 0), -4, -8),),)'`` (layers → heads → command, each level may be a 1-tuple that is broadcast) and a
    bare command ``'((-2, 0), -4, -8)'`` both give ``((-2, 0), -4, -8)``. Different schemes per layer or head are
    not supported: a nested spec must hold exactly one layer entry with one head entry.
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("none", ""):
            return None
        try:
            spec = ast.literal_eval(text)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"cannot parse bar-selection range command {text!r}: {err}") from None
    # The original's fully nested form is (layer entries) -> (head entries) -> command, where a 1-tuple is broadcast:
    # ((command,),). Unwrap exactly those two levels; anything else is taken as a bare command.
    if _is_layer_head_nesting(spec):
        spec = spec[0][0]
    if spec is None:
        return None
    if isinstance(spec, int):
        spec = (spec,)
    items = []
    for item in spec:
        if isinstance(item, int) and not isinstance(item, bool):
            items.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(
            b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in item
        ):
            items.append((item[0], item[1]))
        else:
            raise ValueError(f"bad item {item!r} in bar-selection range command {spec!r}: expected an int or (a, b)")
    return tuple(items)


def _is_layer_head_nesting(spec) -> bool:
    """True for the original's ``((command,),)`` form (one layer entry holding one head entry)."""
    if not isinstance(spec, (tuple, list)) or len(spec) == 0:
        return False
    if not all(isinstance(layer, (tuple, list)) for layer in spec):
        return False
    if any(len(layer) != 1 for layer in spec) or len(spec) != 1:
        # A bare command has ints or 2-tuples as items; a layer/head list of other lengths is unsupported.
        is_pairs = all(len(x) == 2 and all(b is None or isinstance(b, int) for b in x) for x in spec)
        if is_pairs:
            return False
        raise ValueError(
            f"per-layer or per-head bar-selection schemes are not supported; give one command, got {spec!r}"
        )
    head = spec[0][0]
    return head is None or isinstance(head, (tuple, list))


def selection_matrix(command: RangeCommand, num_bars: int, device=None) -> torch.Tensor:
    """Bool (num_bars + 1, num_bars + 1): ``[i, j]`` is True when key bar j is selected for query bar i.

    Only strictly previous bars are ever selected (j < i): an own-bar or future-bar entry would leak future tokens.
    Row and column 0 (the prefix) are always False.
    """
    n = num_bars + 1
    out = torch.zeros(n, n, dtype=torch.bool, device=device)
    if command is None or num_bars == 0:
        return out
    ids = torch.arange(n, device=device)
    delta = ids[None, :] - ids[:, None]  # (n, n): key bar - query bar
    for item in command:
        if isinstance(item, int):
            out |= delta == item
        else:
            lo, hi = item
            sel = torch.ones_like(out)
            if lo is not None:
                sel &= delta >= lo
            if hi is not None:
                sel &= delta < hi
            out |= sel
    out &= delta < 0
    out[0, :] = False
    out[:, 0] = False
    return out


@dataclass(frozen=True)
class BarScheme:
    """Which previous bars a bar sees token by token (``fine``) and through their summaries (``coarse``)."""

    fine: RangeCommand
    coarse: RangeCommand

    @classmethod
    def from_args(cls, preset: str = "museformer", con2con=None, con2sum=None) -> "BarScheme":
        """A named preset, with ``con2con`` / ``con2sum`` (original syntax) overriding its fine / coarse part."""
        if preset not in SCHEME_PRESETS:
            raise ValueError(f"unknown attention scheme {preset!r}; choose one of {sorted(SCHEME_PRESETS)}")
        fine, coarse = SCHEME_PRESETS[preset]
        if con2con is not None:
            fine = parse_range_command(con2con)
        if con2sum is not None:
            coarse = parse_range_command(con2sum)
        return cls(fine, coarse)

    def max_fine_distance(self) -> Optional[int]:
        """How many bars back the fine (token-level) selection reaches at most; None when unbounded (``full``).

        The cached decoder drops the tokens of older bars: no later token reads them token by token.
        """
        if self.fine is None:
            return 0
        reach = 0
        for item in self.fine:
            lo = item if isinstance(item, int) else item[0]
            if lo is None:
                return None
            reach = max(reach, -lo)
        return reach

    def matrices(self, num_bars: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(fine, coarse), each bool (num_bars + 1, num_bars + 1). A bar selected by both is seen token by token."""
        fine = selection_matrix(self.fine, num_bars, device)
        coarse = selection_matrix(self.coarse, num_bars, device) & ~fine
        return fine, coarse


@dataclass
class BarLayout:
    """Per-batch bar layout of the regular stream.

    bar_ids:            long (B, T). 0 = prefix (BOS), 1..num_bars = bar index, PAD_BAR (-1) = padding.
    num_complete_bars:  long (B,). Bars that end with ``b-1``; they own summary slots 0..num_complete_bars-1.
    bos_in_first_bar:   bool (B,) or None. True for a sample laid out as the original's training / validation data
                        path did (spec §2.6; ``--bos-in-first-bar``): the BOS also belongs to bar 1, so the BOS
                        row sees every token of bar 1 (future ones included) and bar 1's summary sees the BOS.
                        ``bar_ids`` stay in this project's convention (BOS = 0); the attention module applies the
                        two differences on top of any backend (``attention/bos_in_first_bar.py``). None = no sample.
    cache:              derived plans (the sparse attention's query blocks), computed once per layout and shared
                        by every layer; never compared or printed. A layout is not mutated after it is built.
    """

    bar_ids: torch.Tensor
    num_complete_bars: torch.Tensor
    bos_in_first_bar: Optional[torch.Tensor] = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_bars(self) -> int:
        """Largest bar id in the batch (complete or not); the number of summary slots allotted per sample."""
        return int(self.bar_ids.max().clamp(min=0)) if self.bar_ids.numel() else 0

    @property
    def num_summary_slots(self) -> int:
        """Summary slots per sample in this batch: the largest number of complete bars."""
        return int(self.num_complete_bars.max()) if self.num_complete_bars.numel() else 0

    def cached(self, key, build):
        """``self.cache[key]``, built by ``build()`` on first use (a block plan or mask depends on the layout only,
        so all layers of a forward pass, and its recomputation, share one)."""
        value = self.cache.get(key)
        if value is None:
            value = self.cache[key] = build()
        return value

    def summary_valid(self, num_slots: Optional[int] = None) -> torch.Tensor:
        """Bool (B, S): slot j holds a real summary (bar j + 1 is complete)."""
        s = self.num_summary_slots if num_slots is None else num_slots
        slots = torch.arange(s, device=self.bar_ids.device)
        return slots[None, :] < self.num_complete_bars[:, None]


def bar_index(dictionary, data: Optional[str] = None) -> int:
    """Index of ``b-1`` in ``dictionary`` (a fairseq ``Dictionary``); ValueError if museformer-prep did not build it.

    ``data`` (the task's data path, ``DIR[:DIR2...]``) only names the dict.txt in the message.
    """
    idx = dictionary.index(BAR_SYMBOL)
    if idx == dictionary.unk():
        where = os.path.join(str(data).split(os.pathsep)[0], "dict.txt") if data else "the dictionary"
        raise ValueError(
            f"{where} has no {BAR_SYMBOL} token, so it was not built by museformer-prep; "
            "rebuild the data directory with `museformer-prep all`"
        )
    return idx


def compute_bar_ids(src_tokens: torch.Tensor, bar_token: int, pad: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bar ids (B, T) and number of complete bars (B,) for src = [BOS] + tokens (right-padded).

    Bar id of position t >= 1 is 1 + the number of ``b-1`` tokens strictly before t (after the prefix);
    position 0 (the BOS prefix) gets 0, padding gets PAD_BAR.
    """
    assert src_tokens.dim() == 2, f"src_tokens must be (B, T), got {tuple(src_tokens.shape)}"
    is_pad = src_tokens.eq(pad)
    is_bar_end = src_tokens.eq(bar_token) & ~is_pad
    is_bar_end[:, 0] = False  # the prefix never closes a bar
    ends_before = torch.cumsum(is_bar_end.long(), dim=1) - is_bar_end.long()  # b-1 tokens strictly before t
    bar_ids = ends_before + 1
    bar_ids[:, 0] = 0
    bar_ids = bar_ids.masked_fill(is_pad, PAD_BAR)
    return bar_ids, count_complete_bars(src_tokens, bar_ids, bar_token)


def count_complete_bars(src_tokens: torch.Tensor, bar_ids: torch.Tensor, bar_token: int) -> torch.Tensor:
    """Complete bars per sample (B,): the ``b-1`` tokens after the prefix (bar id > 0, so neither the BOS nor
    padding, whose bar ids are 0 and ``PAD_BAR``); each closes one bar."""
    return (src_tokens.eq(bar_token) & bar_ids.gt(0)).sum(dim=1)


def build_beat_lut(symbols: Sequence[str], nspecial: int = 4, beat_mask_ts: bool = False) -> torch.Tensor:
    """Beat-id lookup table (V,) over dictionary indices (spec §3).

    ``o-k`` → k + 1 (starts a new onset id); ``b-``, the bar-level change token (``t-``, or ``s-`` when
    ``beat_mask_ts``) and the special symbols → 0; every other token → -1 (inherits the current onset id).
    """
    zero_prefix = ("b-", "s-") if beat_mask_ts else ("b-", "t-")
    lut = torch.full((len(symbols),), -1, dtype=torch.long)
    for idx, sym in enumerate(symbols):
        if idx < nspecial or sym.startswith(zero_prefix):
            lut[idx] = 0
        elif sym.startswith("o-") and sym[2:].isdigit():
            lut[idx] = int(sym[2:]) + 1
    return lut


def compute_beat_ids(src_tokens: torch.Tensor, beat_lut: torch.Tensor) -> torch.Tensor:
    """Beat (onset) ids (B, T): an ``o-k`` and the tokens after it up to the next ``o-`` get k + 1; tokens whose
    LUT entry is 0 get 0 without resetting the running onset; tokens before any onset get 0."""
    vals = beat_lut.to(src_tokens.device)[src_tokens]  # (B, T)
    t = torch.arange(src_tokens.size(1), device=src_tokens.device).expand_as(src_tokens)
    last_onset_pos = torch.where(vals > 0, t, torch.full_like(t, -1)).cummax(dim=1).values  # (B, T)
    running = torch.gather(vals, 1, last_onset_pos.clamp(min=0))
    running = torch.where(last_onset_pos >= 0, running, torch.zeros_like(running))
    return torch.where(vals == 0, torch.zeros_like(running), running)


def next_bar_id(position: int, last_bar: int, last_closed: bool) -> int:
    """Bar id of a token appended at ``position`` after a token of bar ``last_bar`` (``last_closed``: that token
    was a ``b-1``): the one-token form of ``compute_bar_ids`` / ``BarLayout.append``, on Python ints."""
    return 0 if position == 0 else max(1, last_bar + int(last_closed))


def next_beat_id(beat_lut: Sequence[int], onset_token: int, token: int) -> int:
    """Beat id of ``token`` when the last onset token before it is ``onset_token`` (any token whose LUT entry is
    <= 0 when there is none): the one-token form of ``compute_beat_ids``, on Python ints (``beat_lut`` a list)."""
    value = beat_lut[token]
    if value >= 0:
        return value
    running = beat_lut[onset_token]
    return running if running > 0 else 0


def dense_masks(layout: BarLayout, scheme: BarScheme) -> Tuple[torch.Tensor, torch.Tensor]:
    """The full boolean masks of one FC-Attention layer (True = may attend), keys ordered [summaries | regular].

    Returns ``reg_mask`` (B, T, S + T) for regular queries (aggregation step, spec §2.2 step 5) and
    ``sum_mask`` (B, S, S + T) for summary queries (summarisation step, step 3), with S = num_summary_slots.
    O(T²) memory: this is the obviously-correct reference, not the fast path.
    """
    bar_ids = layout.bar_ids
    B, T = bar_ids.shape
    S = layout.num_summary_slots
    fine, coarse = scheme.matrices(max(layout.num_bars, S), bar_ids.device)
    q_bar = bar_ids.clamp(min=0)  # padding rows index row 0; they end up seeing only the prefix
    valid_sum = layout.summary_valid(S)  # (B, S)

    # Regular query -> summary keys: coarse bars only, real summaries only.
    slot_bar = torch.arange(1, S + 1, device=bar_ids.device)
    reg2sum = coarse[q_bar][:, :, slot_bar] & valid_sum[:, None, :]  # (B, T, S)
    # Regular query -> regular keys: prefix, fine bars, own bar causally; never padding.
    k_bar = bar_ids[:, None, :]  # (B, 1, T)
    q_bar_col = bar_ids[:, :, None]  # (B, T, 1)
    k_valid = k_bar.ne(PAD_BAR)
    fine_sel = torch.gather(fine[q_bar], 2, k_bar.clamp(min=0).expand(B, T, T))  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=bar_ids.device).tril()
    own_bar = (k_bar == q_bar_col) & causal & q_bar_col.ne(PAD_BAR)
    reg2reg = k_valid & ((k_bar == 0) | fine_sel | own_bar)

    # Summary query (slot j, bar j + 1) -> itself and all tokens of its own bar (bidirectional, no prefix).
    sum2sum = torch.eye(S, dtype=torch.bool, device=bar_ids.device).expand(B, S, S)
    sum2reg = (bar_ids[:, None, :] == slot_bar[None, :, None]) & valid_sum[:, :, None]  # (B, S, T)
    if layout.bos_in_first_bar is not None and T > 0:
        # The original's training layout (spec §2.6): the BOS is also bar 1's first token, so the BOS row sees all
        # of bar 1 (future tokens included) and bar 1's summary sees the BOS.
        flags = layout.bos_in_first_bar
        reg2reg = reg2reg.clone()
        reg2reg[:, 0, :] |= flags[:, None] & bar_ids.eq(1)
        if S > 0:
            sum2reg = sum2reg.clone()
            sum2reg[:, 0, 0] |= flags & valid_sum[:, 0]
    reg_mask = torch.cat([reg2sum, reg2reg], dim=2)
    sum_mask = torch.cat([sum2sum, sum2reg], dim=2)
    return reg_mask, sum_mask


def bar_spans(layout: BarLayout, num_bars: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token span of every bar: ``(start, end)``, each long (B, num_bars + 1), indexed by bar id 0..num_bars.

    Bar b of sample i occupies positions ``start[i, b] <= t < end[i, b]`` (bars are contiguous runs of positions);
    a bar absent from a sample has ``start = end = 0``. Column 0 is the prefix (BOS). Used by the block-sparse
    attention to gather each bar's tokens.
    """
    bar_ids = layout.bar_ids
    B, T = bar_ids.shape
    nb = layout.num_bars if num_bars is None else num_bars
    pos = torch.arange(T, device=bar_ids.device).expand(B, T)
    real = bar_ids.ne(PAD_BAR) & bar_ids.le(nb)
    idx = torch.where(real, bar_ids, torch.full_like(bar_ids, nb + 1))  # padding -> a spare column, dropped below
    start = torch.full((B, nb + 2), T, dtype=torch.long, device=bar_ids.device)
    end = torch.zeros((B, nb + 2), dtype=torch.long, device=bar_ids.device)
    start = start.scatter_reduce(1, idx, pos, reduce="amin")
    end = end.scatter_reduce(1, idx, pos + 1, reduce="amax")
    start, end = start[:, : nb + 1], end[:, : nb + 1]
    start = torch.where(end > 0, start, torch.zeros_like(start))
    return start, end
