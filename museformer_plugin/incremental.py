"""KV-cached incremental FC-Attention decoding: one new token per sample costs O(fine tokens + summaries).

The original re-ran the whole model over the whole prefix at every generation step (spec §7). Here every layer
keeps a cache, stored in fairseq's ``incremental_state`` (so ``SequenceGenerator`` and its beam reorder work).
The maths is the layer modules' own (``embed_regular`` / ``embed_summaries``, ``FineCoarseAttention.project`` /
``summary_kv`` / ``out_proj``, ``MuseformerDecoderLayer.ffn``, ``attention.window.attend_window``); this module
only decides which keys each new token sees.

* ``k{l}``/``v{l}`` (B, H, cap, D): the *store* of regular keys/values that a future token may still read token by
  token: the BOS (slot 0) and the positions from ``KEEP_FROM`` on (slot = position - ``BASE``). With a bounded
  bar selection (the paper's: at most 32 bars back) older bars are dropped (the *lean* cache): a bar is compacted
  away when the store would otherwise grow, so the store holds about the last ``max fine distance`` bars and
  memory grows with the summaries only. ``full`` attention keeps everything. A step writes its key/value to the
  window only; a bar's keys/values are copied from the window to the store once, in the step that closes it (the
  BOS's in its own step), since only complete bars are read from the store.
* ``s_k{l}``/``s_v{l}`` (B, H, S, D): K2 = Z·Wk2 and V2 = Z·Wv2 of every *complete* bar (slot j = bar j + 1).
  A bar's summary is computed ONCE, in the step that processes its ``b-1``: the summary token goes through all
  layers exactly as in the full forward (LN1 → q/k/v with the summary biases → one softmax over [its own key |
  the bar's regular keys at that layer] → Z → K2/V2 cached → residual Wo·Z + bo → FFN → next layer). The summary
  of bar b is first needed by bar b + 3 (spec §2.4), so it is always ready in time.
* ``w_k{l}``/``w_v{l}`` (B, H, wcap, D): the *window* of the current bar, i.e. exactly the keys a token of this bar
  may see (spec §2.2 step 5): [K2/V2 of its coarse bars | BOS | regular keys of its fine bars | its own bar so
  far]. It is rebuilt by one gather when a sample enters a new bar (once per bar) and the new token's key/value is
  appended at every step, so a step never gathers. The new query runs one softmax over the window (causality is
  implicit: the window holds only the own bar's tokens up to the new one).

The cached keys and values are fp32 on CPU whatever the weights' dtype (bf16 batched matmuls of the window's
shape run several times slower than fp32 on CPUs, while the bf16 Linear layers run twice as fast); on CUDA they
keep the weights' dtype.

Per-sample bookkeeping (CPU long tensor ``state["bookkeeping"]`` (B, NUM_COLUMNS) and bar spans (B, nbars), in positions) gives each
sample its own length, so a batch may hold prompts of different lengths. Bar and beat ids of the new token come
from the one-token rules of ``bar_layout`` (``next_bar_id`` / ``next_beat_id``, tested equal to the sequence
rules) on Python ints, and the bar/beat sinusoids are kept per id, so a step's Python work does not grow with the
context and the embeddings equal the full forward's. Buffers grow geometrically
(amortised O(1) per token): the store and the window by 1.25× (they stop growing), the rest by doubling.

Calling convention (fairseq's): ``prev_output_tokens`` (B, T) holds the whole sequence so far; the columns not seen
by an earlier call are processed. The first call may pass a whole prompt: a right-padded prompt is *prefilled* in
one full (sparse) forward pass whose per-layer keys, values and summaries fill the cache; any other shape (a
left-padded prompt) is processed one column at a time. A ``pad`` in a new column means "this sample has no token
here": the sample is left unchanged and its output repeats its last real position's, so ``out[:, -1]`` is always
the next-token prediction of every sample.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Tuple

import torch

from .attention.window import attend_window
from .bar_layout import BarScheme, bar_spans, next_bar_id, next_beat_id

STATE_KEY = "fc_cache"  # batched tensors: reordered along dim 0 by `reorder`
SHARED_KEY = "fc_cache_shared"  # unbatched, shared by all samples: columns consumed, fused weights, beat LUT

# Columns of the per-sample bookkeeping table ``state["bookkeeping"]`` (CPU long tensor (B, NUM_COLUMNS)).
LENGTH, WLEN, OWN_START, LAST_BAR, LAST_CLOSED, NUM_COMPLETE, ONSET_TOK, BASE, KEEP_FROM = range(9)
NUM_COLUMNS = 9


@lru_cache(maxsize=None)
def _bar_rows(scheme: BarScheme, bar: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(fine bars, coarse bars) of query bar ``bar`` (ascending bar ids), from ``BarScheme.matrices``.

    Row ``bar`` of the selection matrices only selects bars < ``bar``, so it does not depend on how many bars the
    matrices are built for; one matrix of ``bar + 1`` bars gives the row.
    """
    fine, coarse = scheme.matrices(bar)
    return (tuple(fine[bar].nonzero().flatten().tolist()), tuple(coarse[bar].nonzero().flatten().tolist()))


def _grow(t: torch.Tensor, dim: int, need: int, factor: float = 2.0) -> torch.Tensor:
    """``t`` with size >= ``need`` along ``dim`` (capacity times ``factor`` at least, old contents kept)."""
    cap = t.size(dim)
    if cap >= need:
        return t
    new_cap = max(need, int(factor * cap), 16)
    shape = list(t.shape)
    shape[dim] = new_cap
    out = t.new_zeros(shape)
    out.narrow(dim, 0, cap).copy_(t)
    return out


def _empty_state(decoder, batch_size: int, device, dtype, store_cap: int = 64) -> Dict[str, torch.Tensor]:
    layer0 = decoder.layers[0].self_attn
    H, D = layer0.num_heads, layer0.head_dim
    state: Dict[str, torch.Tensor] = {}
    for i in range(len(decoder.layers)):
        for name, cap in (("k", store_cap), ("v", store_cap), ("w_k", 64), ("w_v", 64), ("s_k", 8), ("s_v", 8)):
            state[f"{name}{i}"] = torch.zeros(batch_size, H, cap, D, device=device, dtype=dtype)
    book = torch.zeros(batch_size, NUM_COLUMNS, dtype=torch.long)
    book[:, ONSET_TOK] = decoder.dictionary.eos()  # no onset seen yet: a token whose beat LUT entry is 0
    book[:, KEEP_FROM] = 1
    state["bookkeeping"] = book
    state["bar_start"] = torch.zeros(batch_size, 16, dtype=torch.long)  # bar id -> first position (CPU)
    state["bar_end"] = torch.zeros(batch_size, 16, dtype=torch.long)  # bar id -> one past its last position
    weights = decoder.embed_tokens.weight
    state["last_out"] = torch.zeros(batch_size, decoder.embed_dim, device=device, dtype=weights.dtype)
    return state


def cache_dtype(param: torch.Tensor) -> torch.dtype:
    """dtype of the cached keys/values: the weights' on CUDA, fp32 on CPU (see the module docstring)."""
    return param.dtype if param.device.type == "cuda" else torch.promote_types(param.dtype, torch.float32)


def _slot(row, pos: int) -> int:
    """Store slot of position ``pos`` for a sample whose bookkeeping row is ``row`` (the BOS always sits in slot 0)."""
    return 0 if pos == 0 else pos - row[BASE]


def _compact(state, num_layers: int, s: int, row) -> None:
    """Drop sample ``s``'s stored positions before ``KEEP_FROM`` (no future token reads them token by token)."""
    shift = (row[KEEP_FROM] - 1) - row[BASE]
    n = row[LENGTH] - row[KEEP_FROM]
    if shift <= 0:
        return
    for i in range(num_layers):
        for name in ("k", "v"):
            store = state[f"{name}{i}"]
            if n > 0:
                store[s, :, 1 : 1 + n] = store[s, :, 1 + shift : 1 + shift + n].clone()
    row[BASE] += shift


def _ensure_store(state, num_layers: int, rows, pos: List[int]) -> None:
    """Room in the store for every sample's position ``pos[s]``: compact the samples that would overflow it, then
    grow it (by 1.25×) if one still does. Compacting only then keeps its cost amortised O(1) per token."""
    cap = state["k0"].size(2)
    if max(_slot(r, p) for r, p in zip(rows, pos)) < cap:
        return
    for s, (r, p) in enumerate(zip(rows, pos)):
        if _slot(r, p) >= cap:
            _compact(state, num_layers, s, r)
    top = max(_slot(r, p) for r, p in zip(rows, pos)) + 1
    if top > cap:  # 1.25x: with compaction first, the store only grows while the kept bars do (lean memory)
        for i in range(num_layers):
            state[f"k{i}"], state[f"v{i}"] = _grow(state[f"k{i}"], 2, top, 1.25), _grow(state[f"v{i}"], 2, top, 1.25)


def _ensure_capacity(state, num_layers: int, need_w: int, need_bar: int) -> None:
    """Grow the window (by 1.25×), the summary buffers and the bar tables (by doubling) so that the step's writes
    fit."""
    if state["w_k0"].size(2) < need_w:  # the window grows by the summaries only once the fine bars are all there
        for i in range(num_layers):
            state[f"w_k{i}"] = _grow(state[f"w_k{i}"], 2, need_w, 1.25)
            state[f"w_v{i}"] = _grow(state[f"w_v{i}"], 2, need_w, 1.25)
    if state["s_k0"].size(2) < need_bar:
        for i in range(num_layers):
            state[f"s_k{i}"], state[f"s_v{i}"] = _grow(state[f"s_k{i}"], 2, need_bar), _grow(state[f"s_v{i}"], 2, need_bar)
    if state["bar_start"].size(1) < need_bar:
        state["bar_start"], state["bar_end"] = _grow(state["bar_start"], 1, need_bar), _grow(state["bar_end"], 1, need_bar)


def _enter_bar(state, decoder, s: int, bar: int, row) -> int:
    """Sample ``s`` starts (or, after a prefill, continues) ``bar``: set what its store must keep and fill its window
    with [coarse K2/V2 | BOS | fine bars' K/V]; returns the window length. Bar 0 is the BOS itself: its window
    starts empty and the BOS key is appended by the step."""
    if bar == 0:
        return 0
    scheme = decoder.scheme
    reach = scheme.max_fine_distance()
    if reach is not None and bar - reach >= 1:  # bars before bar - reach are never read token by token again
        row[KEEP_FROM] = max(row[KEEP_FROM], int(state["bar_start"][s, bar - reach]))
    fine, coarse = _bar_rows(scheme, bar)
    starts, ends = state["bar_start"][s], state["bar_end"][s]
    slots = [j - 1 for j in coarse]  # summary slot of bar j; every coarse bar is < bar, hence complete
    spans = [(0, 1)] + [(int(starts[j]), int(ends[j])) for j in fine]  # the BOS prefix, then the fine bars
    pos = torch.cat([torch.arange(a, b) for a, b in spans])
    idx = torch.where(pos.eq(0), torch.zeros_like(pos), pos - row[BASE])  # store slots
    n_sum, n = len(slots), len(slots) + len(pos)
    _ensure_capacity(state, len(decoder.layers), n + 1, 0)
    dev = state["k0"].device
    slot_idx = torch.tensor(slots, dtype=torch.long, device=dev)
    pos_idx = idx.to(dev)
    for i in range(len(decoder.layers)):
        for w, src_sum, src_reg in (("w_k", "s_k", "k"), ("w_v", "s_v", "v")):
            win = state[f"{w}{i}"]
            if n_sum:
                win[s, :, :n_sum] = state[f"{src_sum}{i}"][s].index_select(1, slot_idx)
            win[s, :, n_sum:n] = state[f"{src_reg}{i}"][s].index_select(1, pos_idx)
    return n


def _summarise(layer, state, i: int, s: int, h, own_start: int, own_end: int, slot: int, qkv_w):
    """Layer ``i`` of the summary token of sample ``s``'s just-completed bar (spec §2.2 steps 3, 4, 6, 7).

    h (1, 1, C): the summary's input to this layer. Its keys are [own key | the bar's regular keys at this layer],
    which sit in the window at [own_start, own_end). Caches K2/V2 in slot ``slot``; returns the layer's output.
    """
    attn = layer.self_attn
    q, k, v = attn.project(layer.attn_norm(h), "sum", qkv_w)  # (1, H, 1, D) each
    keys = torch.cat([k, state[f"w_k{i}"][s : s + 1, :, own_start:own_end]], dim=2)  # (1, H, 1 + Lbar, D)
    values = torch.cat([v, state[f"w_v{i}"][s : s + 1, :, own_start:own_end]], dim=2)
    z = attend_window(q, keys, values).transpose(1, 2).reshape(1, 1, attn.embed_dim)  # heads concatenated
    k2, v2 = attn.summary_kv(z)  # (1, H, 1, D) each
    state[f"s_k{i}"][s, :, slot] = k2[0, :, 0].to(state[f"s_k{i}"].dtype)
    state[f"s_v{i}"][s, :, slot] = v2[0, :, 0].to(state[f"s_v{i}"].dtype)
    return layer.residual(h, attn.out_proj(z))


def _sinusoids(shared, decoder, dim: int, ids: List[int]) -> torch.Tensor:
    """``decoder.embed_sinusoid`` of one id per sample, (B, 1, dim); each id's row is computed once and kept in
    ``shared``."""
    memo = shared.setdefault("sinusoids", {})
    for index in ids:
        if (dim, index) not in memo:
            one = torch.tensor([[index]], device=decoder.embed_tokens.weight.device)
            memo[(dim, index)] = decoder.embed_sinusoid(one, dim)  # (1, 1, dim)
    rows = [memo[(dim, index)] for index in ids]
    return rows[0] if len(rows) == 1 else torch.cat(rows)


def _step(decoder, state, shared, tokens: torch.Tensor) -> torch.Tensor:
    """Process one column ``tokens`` (B,) (pad = inactive sample); returns the final-LN features (B, C).

    ``shared``: what does not change between steps (``weights``: each layer's fused q/k/v weight, ``beat_lut``: the
    beat LUT as a list, the sinusoid rows). The per-step Python work is O(B), never O(context): bar and beat ids
    come from the one-token rules of ``bar_layout`` on ints, the new key/value is written to the window only, and
    a bar's keys/values are copied from the window to the store once, in the step that closes it.
    """
    B = tokens.size(0)
    layers = decoder.layers
    L = len(layers)
    C = decoder.embed_dim
    dev = tokens.device
    lut = shared["beat_lut"]
    rows = state["bookkeeping"].tolist()
    tok = tokens.tolist()
    act = [t != decoder.pad for t in tok]
    pos = [r[LENGTH] for r in rows]
    bars = [next_bar_id(p, r[LAST_BAR], bool(r[LAST_CLOSED])) for p, r in zip(pos, rows)]
    beats = [next_beat_id(lut, r[ONSET_TOK], t) for r, t in zip(rows, tok)]
    close = [a and t == decoder.bar_token and p > 0 for a, t, p in zip(act, tok, pos)]  # this token ends its bar

    _ensure_capacity(state, L, 0, max(bars) + 2)
    for s in range(B):  # entering a new bar (or the BOS): record its start and rebuild the window
        if act[s] and (pos[s] == 0 or bars[s] != rows[s][LAST_BAR]):
            state["bar_start"][s, bars[s]] = pos[s]
            rows[s][WLEN] = _enter_bar(state, decoder, s, bars[s], rows[s])
            rows[s][OWN_START] = rows[s][WLEN]
    _ensure_store(state, L, rows, pos)
    wlen = [r[WLEN] for r in rows]
    need_w = max(wlen) + 1
    _ensure_capacity(state, L, need_w, 0)
    same_w = wlen[0] if len(set(wlen)) == 1 else None
    if same_w is None:
        b_idx, w_idx = torch.arange(B, device=dev), torch.tensor(wlen, device=dev)
    lengths = None if same_w is not None else torch.tensor(wlen, device=dev) + 1  # window keys each query sees
    # The store receives a bar's keys/values when the bar is complete (its b-1), and the BOS's at once.
    flush = [(s, _slot(rows[s], int(state["bar_start"][s, bars[s]])), _slot(rows[s], pos[s]) + 1)
             for s in range(B) if act[s] and (close[s] or pos[s] == 0)]

    x = decoder.embed_regular_from(tokens[:, None], _sinusoids(shared, decoder, decoder.bar_embed_dim, bars),
                                   _sinusoids(shared, decoder, decoder.beat_embed_dim, beats))  # (B, 1, C)
    closing = [s for s in range(B) if close[s]]
    h_sum = {s: decoder.embed_summaries(torch.tensor([[bars[s]]], device=dev)) for s in closing}  # (1, 1, C)
    for i, (layer, qkv_w) in enumerate(zip(layers, shared["weights"])):
        attn = layer.self_attn
        q, k, v = attn.project(layer.attn_norm(x), "reg", qkv_w)  # (B, H, 1, D) each
        wk, wv = state[f"w_k{i}"], state[f"w_v{i}"]
        if same_w is not None:
            wk.narrow(2, same_w, 1).copy_(k)  # in the cache's dtype
            wv.narrow(2, same_w, 1).copy_(v)
        else:
            wk[b_idx, :, w_idx], wv[b_idx, :, w_idx] = k[:, :, 0].to(wk.dtype), v[:, :, 0].to(wv.dtype)
        for s, a, b in flush:  # the bar just completed (or the BOS): its keys/values join the store
            own = rows[s][OWN_START]
            state[f"k{i}"][s, :, a:b] = wk[s, :, own : own + b - a]
            state[f"v{i}"][s, :, a:b] = wv[s, :, own : own + b - a]
        for s in closing:  # the bar is now complete at this layer: its summary passes through this layer
            h_sum[s] = _summarise(layer, state, i, s, h_sum[s], rows[s][OWN_START], wlen[s] + 1,
                                  bars[s] - 1, qkv_w)
        out = attend_window(q, wk[:, :, :need_w], wv[:, :, :need_w], lengths)  # (B, H, 1, D)
        x = layer.residual(x, attn.out_proj(out.transpose(1, 2).reshape(B, 1, C)))  # (B, 1, C)
    feats = decoder.final_norm(x)[:, 0]  # (B, C)

    # Commit the step for active samples only; inactive (pad) samples keep their state and last output.
    for s in range(B):
        if not act[s]:
            continue
        r = rows[s]
        r[LENGTH] = pos[s] + 1
        r[WLEN] = wlen[s] + 1
        r[LAST_BAR] = bars[s]
        r[LAST_CLOSED] = int(close[s])
        r[NUM_COMPLETE] += int(close[s])
        if lut[tok[s]] > 0:
            r[ONSET_TOK] = tok[s]
    for s, _, _ in flush:
        state["bar_end"][s, bars[s]] = pos[s] + 1
    state["bookkeeping"] = torch.tensor(rows, dtype=torch.long)
    if all(act):
        state["last_out"] = feats
    else:
        state["last_out"] = torch.where(torch.tensor(act, device=dev)[:, None], feats, state["last_out"])
    return state["last_out"]


def _is_right_padded(tokens: torch.Tensor, pad: int) -> bool:
    """True when every row is [BOS] + tokens followed only by padding (what the full forward takes)."""
    real = tokens.ne(pad)
    lengths = real.sum(1, keepdim=True)
    return bool(real[:, 0].all()) and bool(real.eq(torch.arange(tokens.size(1), device=tokens.device) < lengths).all())


def _prefill(decoder, tokens: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """The cache after a right-padded prompt ``tokens`` (B, T0), from ONE full forward pass (the layers' own
    sparse path): its per-layer regular keys/values fill the store, its K2/V2 the summaries, and each sample's
    current bar gets its window. Returns (state, features (B, T0, C), where a padding column repeats the
    sample's last real position)."""
    B, T0 = tokens.shape
    L = len(decoder.layers)
    sink: list = []
    feats, _ = decoder.extract_features(tokens, kv_sink=sink)  # (B, T0, C)
    bar_ids, _ = decoder.layout_ids(tokens)
    layout = decoder.build_layout(tokens, bar_ids)
    S = layout.num_summary_slots
    state = _empty_state(decoder, B, tokens.device, cache_dtype(decoder.embed_tokens.weight), store_cap=max(64, T0))
    _ensure_capacity(state, L, 0, max(layout.num_bars, S) + 2)
    for i, (k_reg, v_reg, k2, v2) in enumerate(sink):
        state[f"k{i}"][:, :, :T0] = k_reg
        state[f"v{i}"][:, :, :T0] = v_reg
        state[f"s_k{i}"][:, :, :S] = k2
        state[f"s_v{i}"][:, :, :S] = v2
    start, end = bar_spans(layout)
    nb1 = start.size(1)
    state["bar_start"][:, :nb1], state["bar_end"][:, :nb1] = start.cpu(), end.cpu()

    tok_cpu, bar_cpu = tokens.cpu(), bar_ids.cpu()
    lengths = tokens.ne(decoder.pad).sum(1).cpu()
    lut = decoder.beat_lut.cpu()
    rows = state["bookkeeping"].tolist()
    for s in range(B):
        n = int(lengths[s])
        r = rows[s]
        last = int(tok_cpu[s, n - 1])
        onsets = (lut[tok_cpu[s, :n]] > 0).nonzero().flatten()
        r[LENGTH], r[LAST_BAR] = n, int(bar_cpu[s, n - 1])
        r[LAST_CLOSED] = int(last == decoder.bar_token and n > 1)
        r[NUM_COMPLETE] = int(layout.num_complete_bars[s])
        r[ONSET_TOK] = int(tok_cpu[s, onsets[-1]]) if onsets.numel() else decoder.dictionary.eos()
        if r[LAST_BAR] >= 1 and not r[LAST_CLOSED]:  # inside a bar: its window = context + the bar so far
            n_ctx = _enter_bar(state, decoder, s, r[LAST_BAR], r)
            own0 = int(state["bar_start"][s, r[LAST_BAR]])
            own = torch.arange(own0, n, device=tokens.device) - r[BASE]
            _ensure_capacity(state, L, n_ctx + len(own) + 1, 0)
            for i in range(L):
                for w, src in (("w_k", "k"), ("w_v", "v")):
                    state[f"{w}{i}"][s, :, n_ctx : n_ctx + len(own)] = state[f"{src}{i}"][s].index_select(1, own)
            r[OWN_START], r[WLEN] = n_ctx, n_ctx + len(own)
    state["bookkeeping"] = torch.tensor(rows, dtype=torch.long)
    last_col = (lengths - 1).to(tokens.device)
    col = torch.minimum(torch.arange(T0, device=tokens.device)[None, :], last_col[:, None])  # (B, T0)
    feats = feats.gather(1, col[:, :, None].expand(-1, -1, feats.size(-1)))
    state["last_out"] = feats[:, -1]
    return state, feats


def forward_incremental(decoder, prev_output_tokens: torch.Tensor, incremental_state, features_only: bool = False):
    """One cached decoding call of ``MuseformerDecoder`` (used by its ``forward`` when ``incremental_state`` is set).

    prev_output_tokens (B, T) = [</s>] + tokens so far (fairseq's convention: the whole sequence at every call);
    only the columns not consumed by earlier calls are run. Pad tokens mark "no token here" for that sample.
    Returns (out (B, Tnew, V) — or final-LN features (B, Tnew, C) with ``features_only`` —,
    {"attn": [None], "inner_states": [features]}). Column t of ``out`` is the prediction after the sample's last
    real token at or before t. Dropout layers run as configured: call ``model.eval()`` for sampling.
    """
    B, T = prev_output_tokens.shape
    state = decoder.get_incremental_state(incremental_state, STATE_KEY)
    shared = decoder.get_incremental_state(incremental_state, SHARED_KEY)
    consumed = 0 if state is None else int(shared["consumed"])
    assert T > consumed, (
        f"prev_output_tokens has {T} columns but {consumed} were already processed; pass the whole sequence so far "
        "plus at least one new column")
    if shared is None or "weights" not in shared:
        shared = {"weights": [layer.self_attn.qkv_weight() for layer in decoder.layers],
                      "beat_lut": decoder.beat_lut.tolist()}
    param = decoder.embed_tokens.weight
    if state is None and T > 1 and _is_right_padded(prev_output_tokens, decoder.pad):
        state, feats = _prefill(decoder, prev_output_tokens)  # the prompt in one pass
    else:
        if state is None:
            state = _empty_state(decoder, B, param.device, cache_dtype(param))
        assert state["bookkeeping"].size(0) == B, (
            f"incremental state holds {state['bookkeeping'].size(0)} samples but prev_output_tokens has {B}; "
            "reorder the state (reorder_incremental_state) when the batch changes")
        outs = [_step(decoder, state, shared, prev_output_tokens[:, t]) for t in range(consumed, T)]
        feats = outs[0][:, None] if len(outs) == 1 else torch.stack(outs, dim=1)  # (B, Tnew, C)
    shared["consumed"] = torch.tensor(T)
    decoder.set_incremental_state(incremental_state, STATE_KEY, state)
    decoder.set_incremental_state(incremental_state, SHARED_KEY, shared)
    extra = {"attn": [None], "inner_states": [feats]}
    if features_only:
        return feats, extra
    return decoder.output_layer(feats), extra


def reorder(decoder, incremental_state, new_order: torch.Tensor):
    """Select / reorder the cached samples (beam search, finished sentences removed): sample b ← new_order[b].

    Free when the order is unchanged (fairseq's SequenceGenerator asks at every step): nothing is copied, so
    ``fairseq-interactive`` stays O(1) per token in the cache.
    """
    state = decoder.get_incremental_state(incremental_state, STATE_KEY)
    if state is None:
        return
    order_cpu = new_order.cpu()
    if order_cpu.numel() == state["bookkeeping"].size(0) and torch.equal(order_cpu, torch.arange(order_cpu.numel())):
        return
    for name, value in state.items():
        state[name] = value.index_select(0, new_order.to(value.device))
    decoder.set_incremental_state(incremental_state, STATE_KEY, state)
