"""The ``museformer_lm`` fairseq task: loads dict.txt and the binarised splits, one song per sample.

    fairseq-train data-bin/lmd6remi --user-dir museformer_plugin --task museformer_lm --arch museformer_lm \\
        --truncate-train 15360 --truncate-valid 10240 --batch-size 1 ...
    fairseq-validate data-bin/lmd6remi --user-dir museformer_plugin --task museformer_lm --path ckpt.pt \\
        --valid-subset test --truncate-test 1024
    fairseq-eval-lm data-bin/lmd6remi --user-dir museformer_plugin --task museformer_lm --path ckpt.pt \\
        --gen-subset test --truncate-test 1024

Dataset chain (spec §5 step 4): indexed dataset (``tokens + [</s>]`` per line) → ``MuseformerDataset`` (drop empty
songs, BOS-shifted source / target, truncation, cached bar and beat ids, padded collate).
"""

import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from . import fairseq_required  # noqa: F401  (a clear message when fairseq is not installed)
from fairseq import utils
from fairseq.data import Dictionary, IdDataset, NestedDictionaryDataset, NumelDataset, PadDataset, data_utils
from fairseq.data.indexed_dataset import get_available_dataset_impl
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from .atomic_checkpoints import install_atomic_checkpoint_copies
from .bar_layout import bar_index, build_beat_lut
from .cli_errors import MuseformerInputError
from .dataset import MuseformerDataset

logger = logging.getLogger(__name__)

@dataclass
class MuseformerLMConfig(FairseqDataclass):
    data: Optional[str] = field(
        default=None, metadata={"help": "data directory holding dict.txt and {split}.bin/.idx from museformer-prep"}
    )
    tokens_per_sample: int = field(
        default=100000,
        metadata={
            "help": "longest sample in tokens (also the model's max positions). The default 100000 filters nothing "
            "out, as in the original; use --truncate-* to shorten songs"
        },
    )
    truncate_train: Optional[int] = field(
        default=None,
        metadata={"help": "keep only the first N tokens of each training song (paper: 15360); default: whole song"},
    )
    truncate_valid: Optional[int] = field(
        default=None,
        metadata={"help": "keep only the first N tokens of each validation song (paper: 10240); default: "
                  "--truncate-train when that is set (so a song that fits a training batch fits here too), "
                  "else the whole song"},
    )
    truncate_test: Optional[int] = field(
        default=None,
        metadata={"help": "keep only the first N tokens of each test song (paper PPL: 1024/5120/10240); "
                  "default: --truncate-train when that is set, else the whole song"},
    )
    beat_mask_ts: bool = field(
        default=False,
        metadata={
            "help": "beat ids: give the time-signature token s-* beat id 0 instead of the tempo token t-* "
            "(for REMIGEN / general-use data, where t-* follows each onset; spec §3)"
        },
    )
    bos_in_first_bar: bool = field(
        default=False,
        metadata={"help": "reproduces the original's training/validation layout, including its bar-1 leak (the BOS "
                  "belongs to bar 1 and sees all of bar 1's tokens; spec §2.6); for comparing with published numbers "
                  "only. Off: the BOS is outside every bar, as in the original's generation path"},
    )
    seed: int = II("common.seed")
    dataset_impl: Optional[ChoiceEnum(get_available_dataset_impl())] = II("dataset.dataset_impl")


@register_task("museformer_lm", dataclass=MuseformerLMConfig)
class MuseformerLMTask(FairseqTask):
    """Language modelling of whole songs (one per sample) with Museformer's bar layout."""

    def __init__(self, cfg: MuseformerLMConfig, dictionary: Dictionary, tokenizer_config: Optional[dict] = None):
        super().__init__(cfg)
        self.dictionary = dictionary
        # the data dir's tokenizer.json (None when it has none): saved in every checkpoint with the dictionary, so
        # the tools can decode a checkpoint's samples without the data directory (see state_dict)
        self.tokenizer_config = tokenizer_config
        self.bar_token = bar_index(dictionary, cfg.data)
        self.beat_lut = build_beat_lut(dictionary.symbols, dictionary.nspecial, cfg.beat_mask_ts)

    @classmethod
    def setup_task(cls, cfg: MuseformerLMConfig, **kwargs):
        if not cfg.data:
            raise ValueError("museformer_lm needs a data directory (the first positional argument)")
        data_path = utils.split_paths(cfg.data)[0]
        dict_path = os.path.join(data_path, "dict.txt")
        if not os.path.isfile(dict_path):
            raise FileNotFoundError(f"no dict.txt in data directory {data_path!r}; build it with `museformer-prep all`")
        dictionary = Dictionary.load(dict_path)
        logger.info("dictionary: %d types", len(dictionary))
        return cls(cfg, dictionary, read_tokenizer_json(data_path))

    def begin_epoch(self, epoch, model):
        """Training only (fairseq's Trainer calls it before an epoch's first update, so before any save): make
        fairseq's checkpoint copies atomic, so a kill during a save cannot truncate checkpoint_last.pt. Setting the
        task up for evaluation or sampling changes nothing global."""
        install_atomic_checkpoint_copies()

    def state_dict(self):
        """What fairseq saves as ``task_state`` in every checkpoint: the dictionary and the tokenizer settings.

        ``{"dictionary": dict.txt's text as ``Dictionary.save`` writes it (specials excluded), "tokenizer": the data
        dir's tokenizer.json contents or None}``, plus what fairseq's base class keeps (nothing for this task). The
        tools rebuild both from a checkpoint alone (museformer_tools.checkpoint), so sampling needs no data dir.
        """
        text = io.StringIO()
        self.dictionary.save(text)
        return {**super().state_dict(), "dictionary": text.getvalue(), "tokenizer": self.tokenizer_config}

    def load_state_dict(self, state_dict):
        """Accepts ``state_dict()``'s form and older checkpoints without it. The dictionary in use stays the one
        the task was built with; a tokenizer config the data dir lacks is taken from the checkpoint."""
        state_dict = dict(state_dict or {})
        state_dict.pop("dictionary", None)
        tokenizer = state_dict.pop("tokenizer", None)
        if self.tokenizer_config is None and isinstance(tokenizer, dict):
            self.tokenizer_config = tokenizer
        super().load_state_dict(state_dict)

    def _truncation(self, split: str) -> Optional[int]:
        """--truncate-{train,valid,test} by split name prefix (valid1, test_long, ... included).

        An unset --truncate-valid / --truncate-test takes --truncate-train's value (logged once per split): with
        only --truncate-train and --max-tokens given, validation songs then fit a batch exactly as training songs do.
        """
        for prefix in ("train", "valid", "test"):
            if split.startswith(prefix):
                value = getattr(self.cfg, f"truncate_{prefix}")
                if value is None and prefix != "train" and self.cfg.truncate_train is not None:
                    value = self.cfg.truncate_train
                    logged = self.__dict__.setdefault("_logged_default_truncation", set())
                    if split not in logged:
                        logged.add(split)
                        logger.info("--truncate-%s not set: %s songs are cut to --truncate-train %d tokens "
                                    "(pass --truncate-%s N to change it)", prefix, split, value, prefix)
                return value
        return None

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        """Load ``split`` ({split}.bin/.idx) from the data directory into ``self.datasets[split]``."""
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)]
        split_path = os.path.join(data_path, split)
        raw = data_utils.load_indexed_dataset(split_path, self.dictionary, self.cfg.dataset_impl, combine=combine)
        if raw is None:
            raise FileNotFoundError(
                f"Dataset not found: split {split!r} ({split_path}.bin/.idx); binarise it with `museformer-prep`"
            )
        dataset = MuseformerDataset(
            raw,
            raw.sizes,
            self.dictionary,
            bar_token=self.bar_token,
            beat_lut=self.beat_lut,
            truncate=self._truncation(split),
            shuffle=split.startswith("train"),
            seed=self.cfg.seed,
            bos_in_first_bar=bool(getattr(self.cfg, "bos_in_first_bar", False)),
        )
        logger.info(
            "%s %s: %d songs (%d empty dropped), truncate=%s",
            data_path, split, len(dataset), dataset.num_dropped_empty, self._truncation(split),
        )
        self.datasets[split] = dataset
        return dataset

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, **kwargs):
        """fairseq's batching, always with ``required_batch_size_multiple=1``.

        fairseq-fixed 0.12.3.1's ``batch_by_size`` silently drops the last samples of the (length-sorted) order
        when the multiple is 8, the CLI default: e.g. 1 of 17 songs with --batch-size 1, 2 of 9 with --batch-size 3.
        That would bias perplexity towards short songs and never train on the longest ones. Songs are batched by
        length anyway, so the multiple buys nothing here.
        """
        if required_batch_size_multiple != 1 and not getattr(self, "_warned_bsz_mult", False):
            logger.info("using --required-batch-size-multiple 1 (was %d): fairseq's batch_by_size drops samples "
                        "otherwise", required_batch_size_multiple)
            self._warned_bsz_mult = True
        if max_tokens is not None and len(dataset) > 0:
            max_positions = self._check_fits_max_tokens(dataset, max_tokens, max_positions, ignore_invalid_inputs)
        return super().get_batch_iterator(
            dataset, max_tokens=max_tokens, max_sentences=max_sentences, max_positions=max_positions,
            ignore_invalid_inputs=ignore_invalid_inputs, required_batch_size_multiple=1, **kwargs,
        )

    def _check_fits_max_tokens(self, dataset, max_tokens: int, max_positions, ignore_invalid_inputs: bool):
        """Refuse (or, where fairseq may skip songs, skip) songs longer than ``--max-tokens``; returns max_positions.

        fairseq's Cython ``batch_by_size`` asserts "Sentences lengths should not exceed max_tokens" on such a song,
        naming neither the subset nor the fix. A validation / test subset with --skip-invalid-size-inputs-valid-test
        instead skips them: ``max_positions`` is lowered to ``max_tokens``, so fairseq's own size filter drops them
        and logs how many. Training songs are never skipped (fairseq always passes ignore_invalid_inputs for them,
        which would silently lose data): a too-long one is an error.
        """
        split = next((name for name, ds in self.datasets.items() if ds is dataset), None)
        longest = int(np.max(dataset.sizes))
        if longest <= max_tokens:
            return max_positions
        is_train = split is not None and split.startswith("train")
        if ignore_invalid_inputs and not is_train:
            return utils.resolve_max_positions(max_positions, max_tokens)
        prefix = next((p for p in ("train", "valid", "test") if split and split.startswith(p)), "valid")
        where = f"subset {split!r}" if split else "a subset"
        fixes = f"--truncate-{prefix} N with N <= {max_tokens}, or --max-tokens {longest}"
        if not is_train:
            fixes += ", or --skip-invalid-size-inputs-valid-test (skips those songs)"
        raise MuseformerInputError(
            f"{where} has a song of {longest} tokens, longer than --max-tokens {max_tokens} (a batch must hold at "
            f"least one whole song): use {fixes}"
        )

    def eval_lm_dataloader(self, dataset, max_tokens: Optional[int] = 36000, batch_size: Optional[int] = None,
                           max_positions: Optional[int] = None, num_shards: int = 1, shard_id: int = 0,
                           num_workers: int = 1, data_buffer_size: int = 10, context_window: int = 0):
        """Batches for ``fairseq-eval-lm``: whole (truncated) songs, not fixed-size token blocks."""
        if context_window > 0:
            raise ValueError(
                "--context-window is not supported by museformer_lm (each sample is one whole song); use "
                "--truncate-test N to score the first N tokens of each song"
            )
        return self.get_batch_iterator(
            dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size, max_positions=max_positions,
            ignore_invalid_inputs=True, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers,
            data_buffer_size=data_buffer_size,
        ).next_epoch_itr(shuffle=False)

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """Prompts for ``fairseq-interactive``: source = [</s>] + prompt; the model derives bar/beat ids itself."""
        eos = self.dictionary.eos()
        sources = [torch.cat([t.new_tensor([eos]), t[t.ne(eos)]]) for t in src_tokens]
        return NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {
                    "src_tokens": PadDataset(sources, pad_idx=self.dictionary.pad(), left_pad=False),
                    "src_lengths": NumelDataset(sources, reduce=False),
                },
                "target": PadDataset(sources, pad_idx=self.dictionary.pad(), left_pad=False),
            },
            sizes=[np.array([len(s) for s in sources])],
        )

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """Continue the prompt (fairseq's SequenceGenerator); generation is conditioned on the </s> BOS."""
        if constraints is not None:
            raise NotImplementedError("constrained decoding is not supported by museformer_lm")
        with torch.no_grad():
            bos = self.dictionary.eos()
            if prefix_tokens is None and sample["net_input"]["src_tokens"].nelement():
                prefix_tokens = sample["net_input"]["src_tokens"]
                if prefix_tokens[:, 0].eq(bos).all():
                    prefix_tokens = prefix_tokens[:, 1:]
            return generator.generate(models, sample, prefix_tokens=prefix_tokens, bos_token=bos)

    def max_positions(self):
        return self.cfg.tokens_per_sample

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary


def read_tokenizer_json(data_path: str) -> Optional[dict]:
    """The contents of ``data_path``/tokenizer.json (written by museformer-prep binarize), or None without one."""
    path = os.path.join(data_path, "tokenizer.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise MuseformerInputError(f"{path} is not valid JSON ({err}); rebuild it with `museformer-prep binarize`")
    if not isinstance(config, dict):
        raise MuseformerInputError(f"{path} holds no JSON object; rebuild it with `museformer-prep binarize`")
    return config
