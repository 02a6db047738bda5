"""museformer-eval-ppl: perplexity of a checkpoint on a split at several lengths in one command (spec §6.1).

For each length L every song is cut to its first L tokens by the task's own ``--truncate-{split}`` (so the bar
layout is built by the same code as in training) and scored with fairseq's validation step and the checkpoint's
criterion, exactly what ``fairseq-validate --truncate-test L`` does. Songs shorter than L are used whole (their
final ``</s>`` is then a target too). Summary tokens have no output and are never counted.

    museformer-eval-ppl checkpoints/museformer/checkpoint_best.pt --data data-bin/lmd6remi \\
        --split test --lengths 1024,5120,10240 --json ppl.json

Loss is reported in bits per token (base 2, as fairseq prints it); ppl = 2^loss = exp(mean NLL in nats).
The JSON maps each length to {loss, loss_unit, nll_nats, ppl, tokens, songs, songs_whole}.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from .device import add_device_arguments, add_old_alias

logger = logging.getLogger("museformer_tools.eval_ppl")

PAPER_LENGTHS = (1024, 5120, 10240)  # the paper's Table 1 (spec §6.3)
SPLITS = ("train", "valid", "test")
WHOLE_SONG = 2**62  # a truncation length no song reaches


def parse_lengths(text: str) -> List[int]:
    """'1024,5120,10240' → [1024, 5120, 10240]; ValueError naming the bad item."""
    lengths = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--lengths expects positive integers like 1024,5120,10240; got {item!r} in {text!r}")
        lengths.append(int(item))
    if not lengths:
        raise ValueError(f"--lengths is empty: {text!r}")
    return sorted(set(lengths))


def check_inputs(checkpoint: str, data: str, split: str) -> None:
    """CheckpointError / FileNotFoundError with the fix when the checkpoint, the data dir or the split is missing."""
    from .checkpoint import require_checkpoint_file

    require_checkpoint_file(checkpoint)
    if not os.path.isdir(data):
        raise FileNotFoundError(f"data directory {data!r} not found; build it with `museformer-prep all MIDI_DIR {data}`")
    if not os.path.isfile(os.path.join(data, "dict.txt")):
        raise FileNotFoundError(f"{data!r} has no dict.txt; build the data directory with `museformer-prep all`")
    for ext in ("bin", "idx"):
        path = os.path.join(data, f"{split}.{ext}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"split {split!r} not found: {path} is missing; binarise it with `museformer-prep all`")


def _set_task_option(task, name: str, value) -> None:
    """Set option ``name`` on the task's config (an OmegaConf DictConfig or a dataclass)."""
    from omegaconf import DictConfig, open_dict

    if isinstance(task.cfg, DictConfig):
        with open_dict(task.cfg):
            task.cfg[name] = value
    else:
        setattr(task.cfg, name, value)


def _set_truncation(task, split: str, length: Optional[int]) -> None:
    """Set ``--truncate-{split}`` on the task's config."""
    _set_task_option(task, f"truncate_{split}", length)


def evaluate(checkpoint: str, data: str, split: str = "test", lengths: Sequence[int] = PAPER_LENGTHS,
             max_tokens: Optional[int] = None, batch_size: Optional[int] = None, device: str = "auto",
             dtype: str = "fp32", model_overrides: Optional[dict] = None,
             bos_in_first_bar: bool = False) -> Dict[int, dict]:
    """Perplexity of ``checkpoint`` on ``split`` of ``data`` at each length; returns {L: {loss, ppl, ...}}.

    ``device``: auto | cpu | cuda; ``dtype``: fp32 | bf16 | fp16 (the model's precision; the loss sums in fp32).
    ``bos_in_first_bar``: score in the original's training / validation layout (the task's --bos-in-first-bar,
    with its bar-1 leak), to compare with published numbers.
    """
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)} (the task's --truncate-* flags); got {split!r}")
    check_inputs(checkpoint, data, split)
    from fairseq import utils

    from .checkpoint import load_model, read_checkpoint
    from .device import DTYPES, resolve_device

    use_cuda = resolve_device(device) == "cuda"
    state = read_checkpoint(checkpoint)  # CheckpointError (one line) for a truncated or foreign file
    # the data dir's dictionary must be the one the checkpoint was trained with (CheckpointError otherwise)
    model, task = load_model(checkpoint, data, state=state, model_overrides=model_overrides)
    saved_cfg = state["cfg"]
    model.to(DTYPES[dtype])
    if use_cuda:
        model.cuda()
    criterion = task.build_criterion(saved_cfg.criterion)
    criterion.eval()
    _set_task_option(task, "bos_in_first_bar", bool(bos_in_first_bar))

    # Full song lengths (untruncated) to report how many songs are shorter than each L. (None would fall back to
    # the checkpoint's --truncate-train, see MuseformerLMTask._truncation.)
    _set_truncation(task, split, WHOLE_SONG)
    full_sizes = task.load_dataset(split).sizes.copy()
    max_positions = utils.resolve_max_positions(task.max_positions(), model.max_positions())
    if max_positions is not None and max(lengths) > max_positions and full_sizes.max() > max_positions:
        raise ValueError(
            f"length {max(lengths)} exceeds the model's max positions {max_positions} (--tokens-per-sample of the "
            "checkpoint); evaluate at shorter lengths"
        )

    results: Dict[int, dict] = {}
    for length in lengths:
        start = time.time()
        _set_truncation(task, split, length)
        dataset = task.load_dataset(split)
        itr = task.get_batch_iterator(
            dataset=dataset,
            # default: L tokens per batch, i.e. at least one full-length (truncated) song
            max_tokens=max_tokens or (None if batch_size else length),
            max_sentences=batch_size,
            max_positions=max_positions,
            ignore_invalid_inputs=False,  # every song must be scored: a too-long one is an error, not a skip
            required_batch_size_multiple=1,
            seed=1,
        ).next_epoch_itr(shuffle=False)
        nll_nats, num_tokens, num_songs = 0.0, 0, 0
        for sample in itr:
            if not sample:
                continue
            sample = utils.move_to_cuda(sample) if use_cuda else sample
            _loss, sample_size, log_output = task.valid_step(sample, model, criterion)
            nll_nats += float(log_output["loss"])  # summed NLL over the batch's targets, in nats
            num_tokens += int(sample_size)  # = ntokens: non-pad targets (cross_entropy, --sentence-avg off)
            num_songs += int(log_output.get("nsentences", sample["nsentences"]))
        # fairseq-fixed's batch_by_size drops the tail batch when required_batch_size_multiple > 1 (we pass 1);
        # make sure no song was lost on the way.
        assert num_songs == len(dataset), f"scored {num_songs} songs but the split has {len(dataset)}"
        mean_nll = nll_nats / max(num_tokens, 1)
        results[length] = {
            "loss": mean_nll / math.log(2),
            "loss_unit": "bits/token (base 2, as fairseq-validate)",
            "nll_nats": mean_nll,
            "ppl": math.exp(mean_nll),
            "tokens": num_tokens,
            "songs": num_songs,
            "songs_whole": int((full_sizes <= length).sum()),
            "layout": "bos-in-first-bar" if bos_in_first_bar else "default",
        }
        logger.info("L=%d: %d songs, %d tokens, %.1fs", length, num_songs, num_tokens, time.time() - start)
    return results


def format_table(results: Dict[int, dict], title: str = "") -> str:
    """A plain-text table of ``evaluate``'s results."""
    lines = [title] if title else []
    lines.append(f"{'length':>8} {'songs':>6} {'whole (<= L)':>13} {'tokens':>10} {'loss (bits)':>12} {'ppl':>10}")
    for length, r in sorted(results.items()):
        lines.append(f"{length:>8} {r['songs']:>6} {r['songs_whole']:>13} {r['tokens']:>10} {r['loss']:>12.4f} "
                     f"{r['ppl']:>10.4f}")
    lines.append("Each song is cut to its first L tokens; songs shorter than L are used whole. "
                 "loss = mean NLL in bits/token, ppl = 2^loss.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="museformer-eval-ppl",
        description="Perplexity of a museformer_plugin checkpoint on the first L tokens of every song of a split, "
                    "for several L in one run (fairseq's validation step underneath).",
        epilog="example:\n  museformer-eval-ppl checkpoints/museformer/checkpoint_best.pt --data data-bin/lmd6remi "
               "--lengths 1024,5120,10240 --json ppl.json\n\n--device/--dtype replace --cpu, --fp16 and --bf16 (kept "
               "as aliases for one release), as in museformer-sample.\n\n"
               "exit status: 0 = table written, 2 = bad input (one line on stderr)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint .pt written by fairseq-train (run_scripts/train.sh)")
    parser.add_argument("--data", required=True, help="binarised data dir (dict.txt, SPLIT.bin/.idx) (required)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to score (default: test)")
    parser.add_argument("--lengths", default=",".join(map(str, PAPER_LENGTHS)),
                        help="comma-separated truncation lengths in tokens (default: the paper's 1024,5120,10240)")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file (default: print only)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="tokens per batch (default: the length L, i.e. one full-length song per batch)")
    parser.add_argument("--batch-size", type=int, default=None, help="songs per batch (default: no cap)")
    add_device_arguments(parser, "run the model in this precision (bf16: GPUs and CPUs with AVX-512 BF16; fp16: "
                         "GPUs, slowly on CPU); the loss sums in fp32")
    add_old_alias(parser, "--cpu", "device", "cpu")
    add_old_alias(parser, "--fp16", "dtype", "fp16")
    add_old_alias(parser, "--bf16", "dtype", "bf16")
    parser.add_argument("--bos-in-first-bar", action="store_true",
                        help="reproduces the original's training/validation layout, including its bar-1 leak (the "
                             "layout behind the paper's perplexities); for comparing with published numbers only "
                             "(default: off, the BOS is outside every bar)")
    parser.add_argument("--model-overrides", default="{}",
                        help="python dict of config overrides, e.g. \"{'attention_impl': 'dense'}\" (default: {})")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # fairseq's dataset/iterator chatter at WARNING; our per-length progress at INFO.
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.WARNING,
                        stream=sys.stderr, force=True)
    logger.setLevel(logging.INFO)
    try:
        lengths = parse_lengths(args.lengths)
        import ast

        overrides = ast.literal_eval(args.model_overrides)
        if not isinstance(overrides, dict):
            raise ValueError(f"--model-overrides must be a python dict literal, got {args.model_overrides!r}")
        results = evaluate(args.checkpoint, args.data, args.split, lengths, args.max_tokens, args.batch_size,
                           args.device, args.dtype, overrides, args.bos_in_first_bar)
    except (FileNotFoundError, ValueError) as err:  # CheckpointError and MuseformerInputError are ValueErrors
        print(f"museformer-eval-ppl: error: {err}", file=sys.stderr)
        return 2
    layout = ", the original's training layout (--bos-in-first-bar)" if args.bos_in_first_bar else ""
    print(format_table(results, f"perplexity of {args.checkpoint} on '{args.split}' ({args.data}){layout}"))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({str(k): v for k, v in results.items()}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
