"""KV-cached incremental FC-Attention decoding: one new token per sample costs O(fine tokens + summaries).

The original re-ran the whole model over the whole prefix at every generation step (spec §7). Here every layer
keeps a cache, stored in fairseq's ``incremental_state`` (so ``SequenceGenerator`` and its beam reorder work):

* ``k{l}``/``v{l}`` (B, H, cap, D): the regular keys/values of every processed position (the BOS is position 0).
* ``s_k{l}``/``s_v{l}`` (B, H, S, D): K2 = Z·Wk2 and V2 = Z·Wv2 of every *complete* bar (slot j = bar j + 1).
  A bar's summary is computed ONCE, in the step that processes its ``b-1``: the summary token goes through all
  layers exactly as in the full forward (LN1 → q/k/v with the summary biases → one softmax over [its own key |
  the bar's regular keys at that layer] → Z → K2/V2 cached → residual Wo·Z + bo → FFN → next layer). The summary
  of bar b is first needed by bar b + 3 (spec §2.4), so it is always ready in time.
* ``w_k{l}``/``w_v{l}`` (B, H, wcap, D): the *window* of the current bar, i.e. exactly the keys a token of this bar
  may see (spec §2.2 step 5): [K2/V2 of its coarse bars | BOS | regular keys of its fine bars | its own bar so
  far]. The window is rebuilt by one gather when a sample enters a new bar (once per bar) and the new token's
  key/value is appended to it at every step, so a step never gathers and never touches coarse bars' tokens. The
  query of the new token then runs one softmax over the window (the causal part is implicit: the window holds
  only the own bar's tokens up to the new one).

Per-sample bookkeeping (CPU long tensor ``meta`` (B, NUM_META) and bar spans (B, nbars)) gives each sample its own
length, so a batch may hold prompts of different lengths. Bar and beat ids of the new token come from the shared
``bar_layout`` definitions (``BarLayout.append``, ``compute_beat_ids`` with the decoder's beat LUT), so the
embeddings equal the full forward's. Buffers grow by doubling (amortised O(1) per step, no cat per step).

Calling convention (fairseq's): ``prev_output_tokens`` (B, T) holds the whole sequence so far; the columns not seen
by an earlier call are processed, one column at a time (the first call may pass a whole prompt: that is the
prefill). A ``pad`` in a new column means "this sample has no token here" (right- or left-padded prompts): the
sample is left unchanged and its output repeats its last real position's, so ``out[:, -1]`` is always the
next-token prediction of every sample.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .bar_layout import BarLayout, BarScheme, compute_beat_ids

STATE_KEY = "fc_cache"  # batched tensors: reordered along dim 0 by `reorder`
META_KEY = "fc_cache_meta"  # unbatched: the number of columns of prev_output_tokens already consumed

# Columns of the per-sample ``meta`` table (CPU long tensor (B, NUM_META)).
LENGTH, WLEN, OWN_START, LAST_BAR, LAST_CLOSED, NUM_COMPLETE, ONSET_TOK = range(7)
NUM_META = 7


@lru_cache(maxsize=None)
def _bar_rows(scheme: BarScheme, bar: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(fine bars, coarse bars) of query bar ``bar`` (ascending bar ids), from ``BarScheme.matrices``.

    Row ``bar`` of the selection matrices only selects bars < ``bar``, so it does not depend on how many bars the
    matrices are built for; one matrix of ``bar + 1`` bars gives the row.
    """
    fine, coarse = scheme.matrices(bar)
    return (tuple(fine[bar].nonzero().flatten().tolist()), tuple(coarse[bar].nonzero().flatten().tolist()))


def _grow(t: torch.Tensor, dim: int, need: int) -> torch.Tensor:
    """``t`` with size >= ``need`` along ``dim`` (capacity doubled, old contents kept)."""
    cap = t.size(dim)
    if cap >= need:
        return t
    new_cap = max(need, 2 * cap, 16)
    shape = list(t.shape)
    shape[dim] = new_cap
    out = t.new_zeros(shape)
    out.narrow(dim, 0, cap).copy_(t)
    return out


def _empty_state(decoder, batch_size: int, device, dtype) -> Dict[str, torch.Tensor]:
    layer0 = decoder.layers[0].self_attn
    H, D = layer0.num_heads, layer0.head_dim
    state: Dict[str, torch.Tensor] = {}
    for i in range(len(decoder.layers)):
        for name, cap in (("k", 64), ("v", 64), ("w_k", 64), ("w_v", 64), ("s_k", 8), ("s_v", 8)):
            state[f"{name}{i}"] = torch.zeros(batch_size, H, cap, D, device=device, dtype=dtype)
    meta = torch.zeros(batch_size, NUM_META, dtype=torch.long)
    meta[:, ONSET_TOK] = decoder.dictionary.eos()  # no onset seen yet: a token whose beat LUT entry is 0
    state["meta"] = meta
    state["bar_start"] = torch.zeros(batch_size, 16, dtype=torch.long)  # bar id -> first position (CPU)
    state["bar_end"] = torch.zeros(batch_size, 16, dtype=torch.long)  # bar id -> one past its last position
    state["last_out"] = torch.zeros(batch_size, decoder.embed_dim, device=device, dtype=dtype)
    return state


def _embed(decoder, tokens, bar_ids, beat_ids):
    """Regular-stream input of the new tokens (B, 1) — the same computation as ``extract_features`` (spec §3)."""
    from .model import sinusoid  # late import: model.py imports this module

    x = torch.cat([
        decoder.embed_tokens(tokens) * decoder.embed_scale,
        sinusoid(bar_ids, decoder.bar_embed_dim),
        sinusoid(beat_ids, decoder.beat_embed_dim),
    ], dim=-1)
    return decoder.dropout(decoder.input_proj(x))  # (B, 1, C)


def _embed_summary(decoder, bar: int, device):
    """Summary-stream input of bar ``bar`` (1, C), as in ``extract_features`` (slot bar - 1, summary id 1)."""
    from .model import sinusoid

    bar_t = torch.tensor([bar], device=device)
    x = torch.cat([
        decoder.embed_summary(torch.ones_like(bar_t)) * decoder.embed_scale,
        sinusoid(bar_t, decoder.bar_embed_dim),
    ], dim=-1)
    return decoder.dropout(decoder.summary_proj(x))  # (1, C)


def _layer_weights(decoder) -> List[dict]:
    """Per layer: the fused regular q/k/v projection (one Linear of 3C outputs with the regular-stream biases) and
    the plain tensors of the other parameters, so a step calls torch functions directly (no Module dispatch)."""
    out = []
    for layer in decoder.layers:
        attn = layer.self_attn
        out.append({
            "qkv_w": attn.qkv_weight(),
            "qkv_b": attn.reg_qkv_bias.reshape(-1),
            "o_w": attn.out_proj.weight, "o_b": attn.out_proj.bias,
            "ln1": (layer.attn_norm.normalized_shape, layer.attn_norm.weight, layer.attn_norm.bias,
                    layer.attn_norm.eps),
            "ln2": (layer.ffn_norm.normalized_shape, layer.ffn_norm.weight, layer.ffn_norm.bias,
                    layer.ffn_norm.eps),
            "fc1": (layer.fc1.weight, layer.fc1.bias), "fc2": (layer.fc2.weight, layer.fc2.bias),
        })
    return out


def _heads(x, H, D):
    return x.view(x.size(0), -1, H, D).transpose(1, 2)  # (B, H, L, D)


def _ffn(layer, x):
    return x + layer.dropout(layer.fc2(F.gelu(layer.fc1(layer.ffn_norm(x)))))


def _rebuild_window(state, decoder, s: int, bar: int, num_layers: int, scheme: BarScheme) -> int:
    """Fill sample ``s``'s window for a new ``bar`` with [coarse K2/V2 | BOS | fine bars' K/V]; returns its length.

    ``bar`` 0 is the BOS itself: its window starts empty and the BOS key is appended by the step.
    """
    if bar == 0:
        return 0
    fine, coarse = _bar_rows(scheme, bar)
    starts, ends = state["bar_start"][s], state["bar_end"][s]
    slots = [j - 1 for j in coarse]  # summary slot of bar j; every coarse bar is < bar, hence complete
    pos: List[int] = [0]  # the BOS prefix: every regular token sees it (spec §2.2 step 5c)
    for j in fine:
        pos.extend(range(int(starts[j]), int(ends[j])))
    n_sum, n = len(slots), len(slots) + len(pos)
    dev = state["k0"].device
    slot_idx = torch.tensor(slots, dtype=torch.long, device=dev)
    pos_idx = torch.tensor(pos, dtype=torch.long, device=dev)
    for i in range(num_layers):
        for w, src_sum, src_reg in (("w_k", "s_k", "k"), ("w_v", "s_v", "v")):
            win = _grow(state[f"{w}{i}"], 2, n + 1)
            state[f"{w}{i}"] = win
            if n_sum:
                win[s, :, :n_sum] = state[f"{src_sum}{i}"][s].index_select(1, slot_idx)
            win[s, :, n_sum:n] = state[f"{src_reg}{i}"][s].index_select(1, pos_idx)
    return n


def _summarise(layer, state, i: int, s: int, h, own_start: int, own_end: int, slot: int, H: int, D: int):
    """Layer ``i`` of the summary token of sample ``s``'s just-completed bar (spec §2.2 steps 3, 4, 6, 7).

    h (1, C): the summary's input to this layer. Its keys are [own key | the bar's regular keys at this layer],
    which sit in the window at [own_start, own_end). Caches K2/V2 in slot ``slot``; returns the layer's output.
    """
    attn = layer.self_attn
    a = layer.attn_norm(h)
    bias = attn.sum_qkv_bias
    q = (attn.q_proj(a) + bias[0]).view(H, 1, D)
    k = (attn.k_proj(a) + bias[1]).view(H, 1, D)
    v = (attn.v_proj(a) + bias[2]).view(H, 1, D)
    keys = torch.cat([k, state[f"w_k{i}"][s, :, own_start:own_end]], dim=1)  # (H, 1 + Lbar, D)
    values = torch.cat([v, state[f"w_v{i}"][s, :, own_start:own_end]], dim=1)
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() * (1.0 / math.sqrt(D))  # (H, 1, 1 + Lbar)
    z = torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)  # (H, 1, D)
    z = z.transpose(0, 1).reshape(1, H * D)  # heads concatenated, before Wo
    state[f"s_k{i}"][s, :, slot] = attn.k2_proj(z).view(H, D)
    state[f"s_v{i}"][s, :, slot] = attn.v2_proj(z).view(H, D)
    h = h + layer.dropout(attn.out_proj(z))
    return _ffn(layer, h)


def _ensure_capacity(state, num_layers: int, need_len: int, need_w: int, need_bar: int) -> None:
    """Grow the position, window and summary buffers (by doubling) so that the step's writes fit."""
    if state["k0"].size(2) < need_len:
        for i in range(num_layers):
            state[f"k{i}"], state[f"v{i}"] = _grow(state[f"k{i}"], 2, need_len), _grow(state[f"v{i}"], 2, need_len)
    if state["w_k0"].size(2) < need_w:
        for i in range(num_layers):
            state[f"w_k{i}"] = _grow(state[f"w_k{i}"], 2, need_w)
            state[f"w_v{i}"] = _grow(state[f"w_v{i}"], 2, need_w)
    if state["s_k0"].size(2) < need_bar:
        for i in range(num_layers):
            state[f"s_k{i}"], state[f"s_v{i}"] = _grow(state[f"s_k{i}"], 2, need_bar), _grow(state[f"s_v{i}"], 2, need_bar)
    if state["bar_start"].size(1) < need_bar:
        state["bar_start"], state["bar_end"] = _grow(state["bar_start"], 1, need_bar), _grow(state["bar_end"], 1, need_bar)


def _step(decoder, state, weights: List[dict], tokens: torch.Tensor) -> torch.Tensor:
    """Process one column ``tokens`` (B,) (pad = inactive sample); returns the final-LN features (B, C)."""
    B = tokens.size(0)
    layers = decoder.layers
    L = len(layers)
    H, D = layers[0].self_attn.num_heads, layers[0].self_attn.head_dim
    C = H * D
    dev = tokens.device
    training = decoder.training
    meta = state["meta"]
    tok_cpu = tokens.cpu()
    lut = state["beat_lut"]
    active = tok_cpu.ne(decoder.pad)

    # Bar and beat ids of the new token, by the shared bar_layout rules (one-token form of compute_bar_ids /
    # compute_beat_ids): position 0 is the BOS prefix (bar 0); a token after a b-1 starts the next bar.
    pos_t = meta[:, LENGTH]
    bar_t = BarLayout(meta[:, LAST_BAR, None], meta[:, NUM_COMPLETE]).append(meta[:, LAST_CLOSED].bool()).bar_ids[:, 1]
    bar_t = torch.where(pos_t.eq(0), torch.zeros_like(bar_t), bar_t)
    beat_t = compute_beat_ids(torch.stack([meta[:, ONSET_TOK], tok_cpu], dim=1), lut)[:, 1]
    closes = tok_cpu.eq(decoder.bar_token) & pos_t.gt(0) & active  # this token ends its bar

    rows = meta.tolist()
    pos, bars, act, close = pos_t.tolist(), bar_t.tolist(), active.tolist(), closes.tolist()
    _ensure_capacity(state, L, max(pos) + 1, 0, max(bars) + 2)
    for s in range(B):  # entering a new bar (or the BOS): record its start and rebuild the window
        if act[s] and (pos[s] == 0 or bars[s] != rows[s][LAST_BAR]):
            state["bar_start"][s, bars[s]] = pos[s]
            rows[s][WLEN] = _rebuild_window(state, decoder, s, bars[s], L, decoder.scheme)
            rows[s][OWN_START] = rows[s][WLEN]
    wlen = [r[WLEN] for r in rows]
    need_w = max(wlen) + 1
    _ensure_capacity(state, L, 0, need_w, 0)
    same_pos = pos[0] if len(set(pos)) == 1 else None
    same_w = wlen[0] if len(set(wlen)) == 1 else None
    if same_pos is None or same_w is None:
        b_idx = torch.arange(B, device=dev)
        pos_idx, w_idx = torch.tensor(pos, device=dev), torch.tensor(wlen, device=dev)

    # The window a query sees: its first wlen + 1 entries (the last one is the new token itself).
    if same_w is not None:
        mask = None
    else:
        mask = (torch.arange(need_w)[None, :] <= torch.tensor(wlen)[:, None]).to(dev)  # (B, W) True = may attend
        mask = mask[:, None, None, :]  # (B, 1, 1, W)
    scale = 1.0 / math.sqrt(D)

    x = _embed(decoder, tokens[:, None], bar_t.to(dev)[:, None], beat_t.to(dev)[:, None])[:, 0]  # (B, C)
    closing = [s for s in range(B) if close[s]]
    h_sum = {s: _embed_summary(decoder, bars[s], dev) for s in closing}
    for i, (layer, w) in enumerate(zip(layers, weights)):
        qkv = F.linear(F.layer_norm(x, *w["ln1"]), w["qkv_w"], w["qkv_b"])  # (B, 3C)
        q = qkv[:, :C].view(B, H, 1, D)
        k3, v3 = qkv[:, C : 2 * C].view(B, H, D), qkv[:, 2 * C :].view(B, H, D)
        kc, vc, wk, wv = state[f"k{i}"], state[f"v{i}"], state[f"w_k{i}"], state[f"w_v{i}"]
        if same_pos is not None:
            kc[:, :, same_pos], vc[:, :, same_pos] = k3, v3
        else:
            kc[b_idx, :, pos_idx], vc[b_idx, :, pos_idx] = k3, v3
        if same_w is not None:
            wk[:, :, same_w], wv[:, :, same_w] = k3, v3
        else:
            wk[b_idx, :, w_idx], wv[b_idx, :, w_idx] = k3, v3
        for s in closing:  # the bar is now complete at this layer: its summary passes through this layer
            h_sum[s] = _summarise(layer, state, i, s, h_sum[s], rows[s][OWN_START], wlen[s] + 1, bars[s] - 1, H, D)
        scores = torch.matmul(q, wk[:, :, :need_w].transpose(-1, -2)).float() * scale  # (B, H, 1, W)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1).to(wv.dtype), wv[:, :, :need_w])  # (B, H, 1, D)
        out = F.linear(out.view(B, C), w["o_w"], w["o_b"])
        x = x + (layer.dropout(out) if training else out)
        h = F.linear(F.gelu(F.linear(F.layer_norm(x, *w["ln2"]), *w["fc1"])), *w["fc2"])
        x = x + (layer.dropout(h) if training else h)
    feats = decoder.final_norm(x)  # (B, C)

    # Commit the step for active samples only; inactive (pad) samples keep their state and last output.
    onset_tok = torch.where(lut[tok_cpu].gt(0), tok_cpu, meta[:, ONSET_TOK]).tolist()
    for s in range(B):
        if not act[s]:
            continue
        r = rows[s]
        r[LENGTH] = pos[s] + 1
        r[WLEN] = wlen[s] + 1
        r[LAST_BAR] = bars[s]
        r[LAST_CLOSED] = int(close[s])
        r[NUM_COMPLETE] += int(close[s])
        r[ONSET_TOK] = onset_tok[s]
        state["bar_end"][s, bars[s]] = pos[s] + 1
    state["meta"] = torch.tensor(rows, dtype=torch.long)
    if all(act):
        state["last_out"] = feats
    else:
        state["last_out"] = torch.where(active.to(dev)[:, None], feats, state["last_out"])
    return state["last_out"]


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
    meta_state = decoder.get_incremental_state(incremental_state, META_KEY)
    if state is None:
        param = decoder.embed_tokens.weight
        state = _empty_state(decoder, B, param.device, param.dtype)
        consumed = 0
    else:
        consumed = int(meta_state["consumed"])
    assert state["meta"].size(0) == B, (
        f"incremental state holds {state['meta'].size(0)} samples but prev_output_tokens has {B}; "
        "reorder the state (reorder_incremental_state) when the batch changes")
    assert T > consumed, (
        f"prev_output_tokens has {T} columns but {consumed} were already processed; pass the whole sequence so far "
        "plus at least one new column")
    if meta_state is None or "weights" not in meta_state:
        meta_state = {"weights": _layer_weights(decoder), "beat_lut": decoder.beat_lut.cpu()}
    state["beat_lut"] = meta_state["beat_lut"]
    outs = [_step(decoder, state, meta_state["weights"], prev_output_tokens[:, t]) for t in range(consumed, T)]
    del state["beat_lut"]
    meta_state["consumed"] = torch.tensor(T)
    decoder.set_incremental_state(incremental_state, STATE_KEY, state)
    decoder.set_incremental_state(incremental_state, META_KEY, meta_state)
    feats = torch.stack(outs, dim=1)  # (B, Tnew, C)
    extra = {"attn": [None], "inner_states": [feats]}
    if features_only:
        return feats, extra
    return decoder.output_layer(feats), extra


def reorder(decoder, incremental_state, new_order: torch.Tensor):
    """Select / reorder the cached samples (beam search, finished sentences removed): sample b ← new_order[b]."""
    state = decoder.get_incremental_state(incremental_state, STATE_KEY)
    if state is None:
        return
    for name, value in state.items():
        state[name] = value.index_select(0, new_order.to(value.device))
    decoder.set_incremental_state(incremental_state, STATE_KEY, state)


def cache_bytes(decoder, incremental_state) -> int:
    """Bytes held by the cache (buffers at their current capacity)."""
    state = decoder.get_incremental_state(incremental_state, STATE_KEY) or {}
    return sum(t.numel() * t.element_size() for t in state.values())
