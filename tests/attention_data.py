"""Random bar layouts and attention inputs shared by the attention tests (tokens: BOS, PAD, b-1, one note)."""
import random

import torch

from museformer_plugin.bar_layout import BarLayout, compute_bar_ids

BOS, PAD, BAR, NOTE = 2, 1, 5, 7


def layout_from_tokens(src_tokens, bar_token, pad):
    """The BarLayout of ``src_tokens`` (B, T) = [BOS] + music tokens (+ right padding with ``pad``)."""
    return BarLayout(*compute_bar_ids(src_tokens, bar_token, pad))


def make_song(rng, num_bars, max_bar_len, complete=True):
    """[BOS] + num_bars bars of 1..max_bar_len tokens (each ends with b-1) + optionally an unfinished bar."""
    toks = [BOS]
    for _ in range(num_bars):
        toks += [NOTE] * rng.randint(0, max_bar_len - 1) + [BAR]
    if not complete:
        toks += [NOTE] * rng.randint(1, max_bar_len)
    return toks


def make_layout(songs):
    T = max(len(s) for s in songs)
    src = torch.tensor([s + [PAD] * (T - len(s)) for s in songs])
    return layout_from_tokens(src, BAR, PAD)


def random_batch(seed, max_bars=60, max_bar_len=9, batch=3):
    rng = random.Random(seed)
    songs = [make_song(rng, rng.randint(1, max_bars), max_bar_len, complete=rng.random() < 0.5) for _ in range(batch)]
    songs[0] = make_song(rng, max_bars, max_bar_len, complete=False)  # one long song with an unfinished bar
    return make_layout(songs)


def qkv(layout, heads=2, dim=8, seed=0, tq=None):
    """Random leaf tensors for both attention steps."""
    g = torch.Generator().manual_seed(seed)
    B, T = layout.bar_ids.shape
    S = layout.num_summary_slots
    tq = T if tq is None else tq

    def r(n):
        return torch.randn(B, heads, n, dim, generator=g).requires_grad_()

    return dict(q_reg=r(tq), k_reg=r(T), v_reg=r(T), q_sum=r(S), k_sum=r(S), v_sum=r(S), k2=r(S), v2=r(S))
