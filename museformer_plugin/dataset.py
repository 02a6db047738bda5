"""MuseformerDataset: one song per sample, optional truncation, bar/beat ids (cached), collate with padding.

Each item of the underlying fairseq indexed dataset is one song as written by ``fairseq-preprocess``:
``tokens + [</s>]``. We turn it into the language-model pair (spec §5 step 4)

    source = [</s>] + tokens        (position 0 is the BOS prefix, bar id 0)
    target = tokens + [</s>]        (the model also learns to end the song)

keep the first ``truncate`` positions of both (spec §4.1: no sliding window, the rest is discarded), and attach the
bar ids and beat ids computed by ``bar_layout`` — the same functions the model uses when it is given raw tokens.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import numpy as np
import torch
from . import fairseq_required  # noqa: F401  (a clear message when fairseq is not installed)
from fairseq.data import FairseqDataset, data_utils

from .bar_layout import PAD_BAR, compute_bar_ids, compute_beat_ids

logger = logging.getLogger(__name__)

# Collate padding values. Tokens use the dictionary's pad index (NOT 0 = <s>, the original's batch-1 bug, spec §4.2);
# bar id -1 marks padding for the attention masks; beat id 0 is the zero row of the beat sinusoid.
PAD_BEAT = 0


class MuseformerDataset(FairseqDataset):
    """Songs as (source, target, bar_ids, beat_ids) samples.

    Args:
        dataset: fairseq indexed dataset; item i = song i as ``tokens + [</s>]`` (1-D LongTensor).
        sizes: lengths of the items of ``dataset`` (numpy array).
        dictionary: the task dictionary (pad/eos and the ``b-1`` index come from it).
        bar_token: dictionary index of ``b-1``.
        beat_lut: ``bar_layout.build_beat_lut`` over ``dictionary.symbols``.
        truncate: keep only the first ``truncate`` source/target positions (None = whole song).
        shuffle: shuffle before sorting by length in ``ordered_indices`` (training).
        bos_in_first_bar: give the BOS bar id 1 (the original's training / validation layout, spec §2.6; the model
            then lets the BOS see all of bar 1). Off by default: this project's layout keeps the BOS out of bars.
    """

    def __init__(self, dataset, sizes, dictionary, bar_token: int, beat_lut: torch.Tensor,
                 truncate: Optional[int] = None, shuffle: bool = True, seed: int = 1, bos_in_first_bar: bool = False):
        super().__init__()
        if truncate is not None and truncate < 1:
            raise ValueError(f"truncation length must be a positive number of tokens, got {truncate}")
        self.dataset = dataset
        self.dictionary = dictionary
        self.pad = dictionary.pad()
        self.eos = dictionary.eos()
        self.bar_token = bar_token
        self.beat_lut = beat_lut
        self.truncate = truncate
        self.shuffle = shuffle
        self.seed = seed
        self.bos_in_first_bar = bos_in_first_bar
        self.epoch = 1
        raw_sizes = np.asarray(sizes, dtype=np.int64)
        # An empty line binarises to a lone </s> (size 1): such a song has nothing to predict, drop it.
        self.song_index = np.flatnonzero(raw_sizes > 1)
        self.num_dropped_empty = len(raw_sizes) - len(self.song_index)
        sizes = raw_sizes[self.song_index]  # source length = len(tokens) + 1 = item length
        self.sizes = np.minimum(sizes, truncate) if truncate is not None else sizes
        # Per-instance cache of (bar_ids, beat_ids) as int16 (a bar or onset index never exceeds 32767 here):
        # computed once per sample, never shared with another (possibly re-binarised) dataset.
        self._id_cache: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.song_index)

    def _ids(self, index: int, source: torch.Tensor) -> torch.Tensor:
        """(2, T) int16: bar ids and beat ids of ``source``, computed on first access and cached."""
        cached = self._id_cache.get(index)
        if cached is None:
            bar_ids, _ = compute_bar_ids(source[None], self.bar_token, self.pad)
            if self.bos_in_first_bar:
                bar_ids[:, 0] = 1  # the BOS is also bar 1's first token
            beat_ids = compute_beat_ids(source[None], self.beat_lut)
            assert int(bar_ids.max()) < 2**15 and int(beat_ids.max()) < 2**15, "bar/beat id overflows int16"
            cached = torch.cat([bar_ids, beat_ids], dim=0).to(torch.int16)
            self._id_cache[index] = cached
        return cached

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[int(self.song_index[index])].long()  # tokens + [</s>]
        source = torch.cat([item.new_tensor([self.eos]), item[:-1]])
        target = item
        if self.truncate is not None:
            source, target = source[: self.truncate], target[: self.truncate]
        ids = self._ids(index, source).long()
        assert ids.size(1) == source.numel(), f"cached ids length {ids.size(1)} != source length {source.numel()}"
        return {"id": index, "source": source, "target": target, "bar_ids": ids[0], "beat_ids": ids[1]}

    def collater(self, samples: List[dict]) -> dict:
        """Right-pad a list of samples into a batch.

        Returns ``{"id", "nsentences", "ntokens", "net_input": {"src_tokens", "src_lengths", "bar_ids",
        "beat_ids"}, "target"}``; tokens/target (B, T) padded with ``dictionary.pad()``, bar ids with -1, beat ids
        with 0. ``ntokens`` counts non-pad target tokens (what the loss is averaged over).
        """
        if len(samples) == 0:
            return {}
        src_tokens = data_utils.collate_tokens([s["source"] for s in samples], self.pad)
        target = data_utils.collate_tokens([s["target"] for s in samples], self.pad)
        bar_ids = data_utils.collate_tokens([s["bar_ids"] for s in samples], PAD_BAR)
        beat_ids = data_utils.collate_tokens([s["beat_ids"] for s in samples], PAD_BEAT)
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(target.ne(self.pad).sum()),
            "net_input": {
                "src_tokens": src_tokens,
                "src_lengths": torch.LongTensor([s["source"].numel() for s in samples]),
                "bar_ids": bar_ids,
                "beat_ids": beat_ids,
            },
            "target": target,
        }

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def size(self, index: int) -> int:
        return int(self.sizes[index])

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # ordered_indices reshuffles per epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def ordered_indices(self) -> np.ndarray:
        """Length-sorted order (similar lengths share a batch, less padding); random tie order when shuffling."""
        if self.shuffle:
            with data_utils.numpy_seed(self.seed, self.epoch):
                order = np.random.permutation(len(self))
        else:
            order = np.arange(len(self))
        return order[np.argsort(self.sizes[order], kind="mergesort")]

    @property
    def supports_prefetch(self) -> bool:
        return False
