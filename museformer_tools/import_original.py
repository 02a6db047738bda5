"""museformer-import-original: a checkpoint of the ORIGINAL Museformer → a checkpoint of this project.

    museformer-import-original checkpoint_best.pt --dict data/meta/dict.txt --out museformer_paper.pt \\
        [--tokenizer data-bin/lmd6remi/tokenizer.json]

The written file is a fairseq checkpoint of ``--arch museformer_lm`` with the original's sizes and bar scheme, in
fp32 by default, that every tool here loads: ``museformer-eval-ppl``, ``museformer-sample`` (no data directory
needed: it carries its dictionary, and its tokenizer settings when ``--tokenizer`` is given),
``fairseq-validate`` / ``fairseq-eval-lm --user-dir museformer_plugin`` and ``fairseq-train
--finetune-from-model``. Use ``--bos-in-first-bar`` when evaluating to reproduce the original's published
perplexities (its training / validation layout, spec §2.6).

Exit status: 0 written, 2 bad input (one line naming the cause; nothing is written).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

PROG = "museformer-import-original"
DTYPES = ("fp32", "fp16", "bf16")


@dataclass
class ImportSummary:
    """What ``import_original`` wrote."""

    out: str
    arch: str
    num_parameters: int
    dictionary_size: int
    layers: int
    embed_dim: int
    heads: int
    ffn_dim: int
    fine: str
    coarse: str
    beat_mask_ts: bool
    tokenizer: Optional[dict]
    not_carried: List[str]
    seconds: float

    def lines(self) -> List[str]:
        tok = json.dumps(self.tokenizer, sort_keys=True) if self.tokenizer else (
            "not known (pass --tokenizer DATA_DIR/tokenizer.json; sampling then needs --data for decoding)")
        out = [
            f"wrote {self.out} ({self.seconds:.1f}s)",
            f"  arch: {self.arch}, {self.layers} layers, d={self.embed_dim}, {self.heads} heads, FFN "
            f"{self.ffn_dim}: {self.num_parameters:,} parameters",
            f"  dictionary: {self.dictionary_size} symbols (fairseq's 4 specials included), carried in the checkpoint",
            f"  scheme: fine {self.fine}, coarse {self.coarse}; beat ids zero on "
            f"{'s-' if self.beat_mask_ts else 't-'} tokens",
            f"  tokenizer settings: {tok}",
        ]
        if self.not_carried:
            out.append("  not carried over:")
            out += [f"    - {item}" for item in self.not_carried]
        out.append("  evaluate as the paper did with `museformer-eval-ppl OUT --data DATA --bos-in-first-bar`")
        return out


class ImportInputError(ValueError):
    """Bad input to the importer (a flag, the dictionary, the tokenizer settings); the message is one line."""


def read_tokenizer(path: Optional[str]) -> Optional[dict]:
    """The tokenizer settings of ``path`` (a tokenizer.json, or a data directory holding one), checked."""
    if path is None:
        return None
    from data_prep.config import TokenizerConfig

    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise ImportInputError(f"--tokenizer {path}: no tokenizer.json there (museformer-prep binarize writes one)")
    try:
        return TokenizerConfig.from_dict(json.loads(file.read_text(encoding="utf-8"))).to_dict()
    except (ValueError, TypeError, AttributeError) as err:
        raise ImportInputError(f"--tokenizer {file} is not a valid tokenizer config: {err}") from None


def read_dictionary(path: str, embedding_rows: int):
    """fairseq ``Dictionary`` of the original's dict.txt; ``ImportInputError`` if it is missing, unreadable, has no
    ``b-1`` or does not match the checkpoint's embedding."""
    from fairseq.data import Dictionary

    if not os.path.isfile(path):
        raise ImportInputError(f"--dict {path} not found (the original's dict.txt, e.g. its data/meta/dict.txt)")
    try:
        dictionary = Dictionary.load(path)
    except (ValueError, RuntimeError, UnicodeDecodeError) as err:
        raise ImportInputError(f"--dict {path} is not a fairseq dict.txt ({str(err).splitlines()[0]})") from None
    if len(dictionary) != embedding_rows:
        raise ImportInputError(
            f"--dict {path} gives {len(dictionary)} symbols (with fairseq's 4 specials) but the checkpoint's token "
            f"embedding has {embedding_rows} rows: pass the dict.txt the model was trained with")
    if dictionary.index("b-1") == dictionary.unk():
        raise ImportInputError(f"--dict {path} has no b-1 token: not a Museformer (REMIGEN) dictionary")
    return dictionary


def build_cfg(translation, impl: str = "auto"):
    """The fairseq config ``fairseq-train --task museformer_lm --arch museformer_lm`` would save for this model,
    with no data directory (none belongs to an imported model; every tool is given its own)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import museformer_plugin

    m = translation.model
    argv = ["DATA", "--user-dir", os.path.dirname(museformer_plugin.__file__), "--task", "museformer_lm",
            "--arch", "museformer_lm", "--criterion", "cross_entropy", "--optimizer", "adam",
            "--decoder-layers", str(m["decoder_layers"]), "--decoder-embed-dim", str(m["decoder_embed_dim"]),
            "--decoder-ffn-embed-dim", str(m["decoder_ffn_embed_dim"]),
            "--decoder-attention-heads", str(m["decoder_attention_heads"]),
            "--bar-embed-dim", str(m["bar_embed_dim"]), "--beat-embed-dim", str(m["beat_embed_dim"]),
            "--dropout", str(m["dropout"]), "--attention-dropout", str(m["attention_dropout"]),
            "--con2con", str(m["con2con"]), "--con2sum", str(m["con2sum"]), "--attention-impl", impl]
    for name, value in translation.task.items():
        if isinstance(value, bool):
            argv += [f"--{name.replace('_', '-')}"] if value else []
        else:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    with warnings.catch_warnings():  # hydra's deprecation chatter about fairseq's own config files
        warnings.simplefilter("ignore")
        args = options.parse_args_and_arch(options.get_training_parser(), argv)
        cfg = convert_namespace_to_omegaconf(args)
    cfg.task.data = None  # the parser wants the positional; the imported model has no data directory
    return cfg


def import_original(checkpoint: str, dict_path: str, out: str, tokenizer: Optional[str] = None,
                    dtype: str = "fp32") -> ImportSummary:
    """Translate ``checkpoint`` (the original's) and write this project's checkpoint to ``out`` (atomically).

    ``OriginalCheckpointError`` / ``ImportInputError`` (one line) for bad input; nothing is written then."""
    start = time.time()
    if dtype not in DTYPES:
        raise ImportInputError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    import torch
    from omegaconf import OmegaConf

    from museformer_plugin.task import MuseformerLMTask

    from .original_checkpoint import map_state_dict, original_options, read_original, translate_options

    state = read_original(checkpoint)
    options = original_options(state, checkpoint)
    translation = translate_options(options, checkpoint)
    mapped = map_state_dict(state["model"], translation.model["decoder_layers"], checkpoint)
    dictionary = read_dictionary(dict_path, mapped["decoder.embed_tokens.weight"].size(0))
    tokenizer_cfg = read_tokenizer(tokenizer)

    cfg = build_cfg(translation)
    # Built as load_model builds it (fairseq's setup_task wants a data directory); its state_dict() is the
    # task_state every checkpoint of this project carries: the dictionary and the tokenizer settings.
    task = MuseformerLMTask(cfg.task, dictionary, tokenizer_cfg)
    model = task.build_model(cfg.model)
    try:
        model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    except RuntimeError as err:  # a shape that does not fit the translated sizes
        raise ImportInputError(f"{checkpoint}: the weights do not fit the translated model "
                               f"({str(err).splitlines()[-1].strip()})") from None
    weights = {name: tensor.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
               for name, tensor in model.state_dict().items()}
    history = state.get("optimizer_history") or [{}]
    num_updates = int(history[-1].get("num_updates", 0) or 0)
    written = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": weights,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "none (imported)",
                               "lr_scheduler_state": {}, "num_updates": num_updates}],
        "task_state": task.state_dict(),
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
                        "previous_training_time": 0.0},
        "imported_from": {"path": os.path.abspath(checkpoint), "arch": str(options["arch"]),
                          "num_updates": num_updates, "not_carried": translation.not_carried},
    }
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    tmp_path = f"{out}.tmp-{os.getpid()}"
    try:
        torch.save(written, tmp_path)
        os.replace(tmp_path, out)  # readers see the old file or the whole new one
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    m = translation.model
    scheme = model.decoder.scheme
    return ImportSummary(
        out=out, arch="museformer_lm", num_parameters=sum(p.numel() for p in model.parameters()),
        dictionary_size=len(dictionary), layers=m["decoder_layers"], embed_dim=m["decoder_embed_dim"],
        heads=m["decoder_attention_heads"], ffn_dim=m["decoder_ffn_embed_dim"], fine=str(scheme.fine),
        coarse=str(scheme.coarse), beat_mask_ts=translation.task["beat_mask_ts"], tokenizer=tokenizer_cfg,
        not_carried=translation.not_carried, seconds=time.time() - start)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a checkpoint of the original Museformer (microsoft/muzic, fairseq 0.10) into a "
                    "checkpoint of this project: the same model, loadable by museformer-eval-ppl, "
                    "museformer-sample, fairseq-validate / fairseq-eval-lm and fairseq-train --finetune-from-model.",
        epilog="example:\n  museformer-import-original checkpoints/mf-lmd6remi-1/checkpoint_best.pt \\\n"
               "      --dict muzic/museformer/data/meta/dict.txt --out museformer_paper.pt\n\n"
               "exit status: 0 written, 2 bad input (nothing written)")
    parser.add_argument("checkpoint", metavar="ORIGINAL_CKPT", help="checkpoint .pt written by the original's "
                        "fairseq-train (fairseq 0.10 'args' or a later fairseq's 'cfg')")
    parser.add_argument("--dict", required=True, metavar="ORIGINAL_DICT",
                        help="the original's dict.txt the checkpoint was trained with (its data/meta/dict.txt)")
    parser.add_argument("--out", required=True, metavar="OUT.pt", help="checkpoint to write (replaced atomically)")
    parser.add_argument("--tokenizer", metavar="PATH", default=None,
                        help="tokenizer.json (or a data directory holding one) to carry in the checkpoint, so that "
                             "sampling decodes without --data (default: none carried)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="dtype of the written weights (default: fp32; the original saves fp16)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # fairseq's and hydra's INFO/DEBUG logs would bury the summary; warnings and errors still show.
    logging.basicConfig(format="%(levelname)s | %(name)s | %(message)s", level=logging.WARNING, force=True)
    from .original_checkpoint import OriginalCheckpointError

    try:
        summary = import_original(args.checkpoint, args.dict, args.out, args.tokenizer, args.dtype)
    except (OriginalCheckpointError, ImportInputError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
