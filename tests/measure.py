"""Measurements that only tests take of product objects: a PNG's size, a BlockMask's bytes, the cached decoder's
lean store. (Plain Python / torch: no fairseq needed to import this module.)"""
from __future__ import annotations

import os
from typing import List

import torch

from museformer_plugin.incremental import KEEP_FROM, LENGTH, STATE_KEY


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{os.fspath(path)} is not a PNG file.")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def block_mask_nbytes(block_mask) -> int:
    """Bytes of every tensor a FlexAttention BlockMask holds (block counts and indices, both directions)."""
    total = 0
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                 "q_indices", "full_q_num_blocks", "full_q_indices"):
        t = getattr(block_mask, name, None)
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
    return total


def stored_positions(decoder, incremental_state) -> List[int]:
    """Per sample: how many positions the cached decoder's store keeps token by token (BOS included)."""
    state = decoder.get_incremental_state(incremental_state, STATE_KEY)
    book = state["bookkeeping"]
    return [1 + max(0, int(r[LENGTH]) - int(r[KEEP_FROM])) if int(r[LENGTH]) else 0 for r in book]
