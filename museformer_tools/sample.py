"""`museformer-sample`: checkpoint → (prompt MIDI) → KV-cached incremental sampling → MIDI and token files.

    museformer-sample checkpoints/checkpoint_best.pt --data data-bin/lmd6remi --out samples --num-samples 4
    museformer-sample ckpt.pt --data data-bin/lmd6remi --out cont --num-samples 2 \\
        --prompt-midi song.mid --prompt-bars 8 --max-bars 64 --seed 1
    museformer-sample ckpt.pt --data data-bin/lmd6remi --out ctrl --num-samples 8 --batch-size 8 \\
        --instruments 0,25,33,128 --time-signature 3/4 --tempo 120 --bars 16 --dtype bf16

Each sample is written as ``sample_NNN.mid`` plus ``sample_NNN.txt`` (the tokens, one line, as museformer-prep
writes them). Sampling uses the cached decoder of ``incremental.py`` (one cached step per token, spec §7 explains
why the original was slow); the defaults follow the original's generation script: top-k 8 at temperature 1.0, up
to 20,480 tokens. The prompt is encoded with the data directory's ``tokenizer.json`` so that it matches training.
The grammar mask (``grammar_mask.py``) is on by default, so every piece is well-formed REMIGEN; the controls
(``controls.py``) restrict it further. Pieces of a batch that end leave it: their rows are dropped from the
decoder's cache with ``reorder_incremental_state``, so later steps cost only the pieces still running. Piece k is
drawn from its own random generator (seeded by ``--seed`` and k), so it does not depend on ``--batch-size``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional

import torch

from .checkpoint import CheckpointError, load_model, read_checkpoint, tokenizer_config_from_checkpoint
from .controls import ControlError
from .controls import add_arguments as add_control_arguments
from .device import DTYPES, add_device_arguments, resolve_device
from .sampling import build_token_mask, piece_generator, sample_batch

EPILOG = """examples:
  museformer-sample ckpt.pt --data data-bin/lmd6remi --out samples --num-samples 4
  museformer-sample ckpt.pt --data data-bin/lmd6remi --out cont --num-samples 2 \\
      --prompt-midi song.mid --prompt-bars 8 --max-bars 64 --seed 1
  museformer-sample ckpt.pt --data data-bin/lmd6remi --out ctrl --num-samples 8 --batch-size 8 \\
      --instruments 0,25,33,128 --time-signature 3/4 --tempo 120 --bars 16 --dtype bf16
  museformer-sample ckpt.pt --out samples --num-samples 4 --report samples_report  # + samples_report/index.html

The original sampled with top-k 8, temperature 1.0, at least 1,024 and at most 20,480 tokens
(pass --min-tokens 1024 to match it) and without a grammar mask (pass --no-grammar-mask to match it).
The controls apply to the sampled tokens; a prompt is kept as it is.
--max-length was called --max-tokens (kept as an alias for one release): in fairseq and
museformer-eval-ppl --max-tokens means tokens per batch.
"""

EXIT_CODES = "exit status: 0 = pieces written, 1 = nothing written, 2 = bad input (one line on stderr)"


class OldFlagName(argparse.Action):
    """An old flag name kept as an alias: stores into the new name's ``dest`` and records the name that was typed
    (``max_length_flag``), so that messages speak of the flag the user gave."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_flag", option_string)


class SampleError(Exception):
    """Bad input (file, flag, checkpoint): reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="museformer-sample", description=__doc__.split("\n")[0], epilog=f"{EPILOG}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="fairseq checkpoint of a museformer_lm model (e.g. checkpoint_best.pt)")
    p.add_argument("--data", default=None,
                   help="data directory with the training dict.txt (and tokenizer.json) from museformer-prep "
                   "(default: the dictionary and tokenizer config saved in the checkpoint; needed only for "
                   "checkpoints written before checkpoints kept them)")
    p.add_argument("--out", required=True, help="output folder for sample_NNN.mid / sample_NNN.txt (required)")
    p.add_argument("--num-samples", type=int, default=1, help="number of pieces to generate (default: 1)")
    p.add_argument("--prompt-midi", help="continue this MIDI file (encoded with the tokenizer config of --data or the "
                   "checkpoint) (default: no prompt)")
    p.add_argument("--prompt-bars", type=int, default=4,
                   help="with --prompt-midi: how many of its first bars form the prompt (default: 4)")
    p.add_argument("--max-bars", type=int, default=None,
                   help="stop a piece after this many bars in total, prompt included (default: no bar limit)")
    p.add_argument("--max-length", type=int, default=20480, metavar="N",
                   help="longest piece in tokens, prompt included, BOS excluded (default: 20480, the original's)")
    p.add_argument("--max-tokens", type=int, dest="max_length", action=OldFlagName, metavar="N",
                   help="old name of --max-length, kept for one release (fairseq's --max-tokens is tokens per batch)")
    p.set_defaults(max_length_flag="--max-length")
    p.add_argument("--min-tokens", type=int, default=0,
                   help="end of song (</s>) is forbidden before this many tokens (default: 0; the original: 1024)")
    p.add_argument("--top-k", type=int, default=8, help="sample among the k most likely tokens; 0 = all (default: 8)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: keep the smallest set of tokens with probability >= p (default: off)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default: 1.0)")
    p.add_argument("--seed", type=int, default=1, help="random seed; the same seed gives the same pieces (default: 1)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="pieces sampled together; a piece that ends leaves the batch and stops costing (default: 1)")
    p.add_argument("--grammar-mask", action=argparse.BooleanOptionalAction, default=True,
                   help="on by default: only allow tokens that keep the piece well-formed REMIGEN (d- after p-, v- "
                   "after d-, increasing onsets, ...; museformer_tools/grammar_mask.py). --no-grammar-mask samples "
                   "the model's raw distribution, as the original did (the controls below then cannot be used)")
    add_control_arguments(p.add_argument_group("controls (through the grammar mask; they apply to the sampled tokens)"))
    speed = p.add_argument_group("speed")
    add_device_arguments(speed, "cast the model to this precision; bf16 or fp16 halves the weights read per token "
                         "(one piece samples ~1.5x faster on a 2-core AVX2 CPU); on CPUs without native bf16/fp16 "
                         "matrix units (AVX2) batches of several pieces run faster in fp32")
    speed.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads for torch (torch.set_num_threads; default: all cores of this process, "
                       f"here {default_threads()})")
    p.add_argument("--analyze", action="store_true",
                   help="also write each sample's piano roll as sample_NNN.png beside its MIDI "
                   "(as `museformer-analyze pianoroll`; needs matplotlib) (default: off)")
    p.add_argument("--report", metavar="DIR",
                   help="also write DIR/index.html for this run's pieces: piano rolls, similarity heatmaps, audio, "
                   "bars, grammar errors, L_t (as `museformer-analyze report`; needs matplotlib, and FluidSynth "
                   "for the audio; DIR must not be inside --out) (default: no report)")
    return p


def default_threads() -> int:
    """All cores this process may run on (its CPU affinity), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_args(args) -> None:
    for name in ("num_samples", "max_length", "batch_size", "prompt_bars"):
        if getattr(args, name) < 1:
            flag = args.max_length_flag if name == "max_length" else f"--{name.replace('_', '-')}"
            raise SampleError(f"{flag} must be at least 1, got {getattr(args, name)}")
    if args.max_bars is not None and args.max_bars < 1:
        raise SampleError(f"--max-bars must be at least 1, got {args.max_bars}")
    if args.top_k < 0:
        raise SampleError(f"--top-k must be >= 0 (0 = no top-k filter), got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise SampleError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature <= 0:
        raise SampleError(f"--temperature must be > 0, got {args.temperature}")
    if args.threads is not None and args.threads < 1:
        raise SampleError(f"--threads must be at least 1, got {args.threads}")
    if args.bars is not None:
        if args.max_bars is not None:
            raise SampleError("--bars (exactly N bars) and --max-bars (at most N bars) exclude each other; pass one")
        if args.min_tokens > 0:
            raise SampleError("--min-tokens cannot be combined with --bars: the piece ends right after its last bar")
    controls = [f"--{n.replace('_', '-')}" for n in ("instruments", "time_signature", "tempo", "bars")
                if getattr(args, n) is not None]
    if controls and not args.grammar_mask:
        raise SampleError(f"{', '.join(controls)} cannot be used without the grammar mask (the controls are "
                          "part of it); drop --no-grammar-mask")
    try:
        resolve_device(args.device)
    except ValueError as err:
        raise SampleError(str(err)) from None
    if args.data is not None and not (Path(args.data) / "dict.txt").is_file():
        raise SampleError(f"no dict.txt in --data {args.data}; pass the data directory the model was trained on "
                          "(built by `museformer-prep all`)")
    if not Path(args.checkpoint).is_file():
        raise SampleError(f"checkpoint {args.checkpoint} does not exist")
    if args.prompt_midi is not None and not Path(args.prompt_midi).is_file():
        raise SampleError(f"--prompt-midi {args.prompt_midi} does not exist")
    if args.report is not None:
        check_report_dir(args.report, args.out)


def check_report_dir(report_dir: str, out_dir: str) -> None:
    """--report: say before sampling what would stop the report afterwards."""
    import importlib.util

    out, report = Path(out_dir).resolve(), Path(report_dir).resolve()
    if report == out or out in report.parents:
        raise SampleError(f"--report {report_dir} is inside --out {out_dir}: the report's copies of the pieces would "
                          f"be read as pieces when {out_dir} is analysed; write it beside (e.g. {out.name}_report)")
    if importlib.util.find_spec("matplotlib") is None:
        raise SampleError("--report needs matplotlib for its pictures: pip install matplotlib (or `make install`)")


def load_tokenizer_config(data_dir: Optional[str], state: dict, checkpoint: str):
    """The tokenizer config of the data: --data's tokenizer.json (written by museformer-prep binarize), else the one
    the checkpoint carries, else the defaults (with a note)."""
    from data_prep.config import TokenizerConfig

    path = Path(data_dir) / "tokenizer.json" if data_dir is not None else None
    if path is not None and path.is_file():
        try:
            config, source = json.loads(path.read_text(encoding="utf-8")), str(path)
        except ValueError as err:
            raise SampleError(f"{path} is not valid JSON: {err}") from None
    else:
        config, source = tokenizer_config_from_checkpoint(state), f"the tokenizer config saved in {checkpoint}"
    if config is None:
        where = f"{path} not found and {checkpoint} carries none" if path else f"{checkpoint} carries no tokenizer config"
        print(f"note: {where}; decoding and prompt encoding use the default tokenizer config", file=sys.stderr)
        return TokenizerConfig()
    try:
        return TokenizerConfig.from_dict(config)
    except (ValueError, TypeError) as err:
        raise SampleError(f"{source} is not a valid tokenizer config: {err}") from None


def prompt_ids(task, midi_path: str, bars: int, tok_cfg, vocab_source: str) -> List[int]:
    """Dictionary ids of the first ``bars`` bars of ``midi_path`` (tokens up to its bars-th ``b-1``)."""
    from data_prep.errors import MidiEncodeError
    from data_prep.midi_to_tokens import encode_midi

    try:
        tokens = encode_midi(midi_path, tok_cfg)
    except MidiEncodeError as err:
        raise SampleError(f"cannot use --prompt-midi {midi_path}: {err}".splitlines()[0]) from None
    ends = [j for j, t in enumerate(tokens) if t == "b-1"]
    if len(ends) >= bars:
        tokens = tokens[: ends[bars - 1] + 1]
    d = task.dictionary
    unknown = sorted({t for t in tokens if d.index(t) == d.unk()})
    if unknown:
        raise SampleError(f"--prompt-midi {midi_path} encodes to tokens missing from {vocab_source} "
                          f"({', '.join(unknown[:5])}): the data dir was built with another tokenizer config")
    return [d.index(t) for t in tokens]


def parse_controls(args, symbols, tok_cfg, vocab_source: str):
    """The control flags as a ``Controls``, checked against the dictionary ``symbols`` and the tokenizer config."""
    from .controls import ControlError, controls_from_args

    try:
        return controls_from_args(args, symbols, tok_cfg, vocab_source)
    except ControlError as err:
        raise SampleError(str(err)) from None


def check_prompt(args, task, prompt: List[int], token_mask) -> None:
    """The prompt leaves room for sampling under --max-length, --max-bars and --bars."""
    d = task.dictionary
    if len(prompt) >= args.max_length:
        raise SampleError(f"the prompt has {len(prompt)} tokens, not fewer than {args.max_length_flag} "
                          f"{args.max_length}; use fewer --prompt-bars or a larger {args.max_length_flag}")
    bar_limit, flag = (args.bars, "--bars") if args.bars is not None else (args.max_bars, "--max-bars")
    prompt_bars = prompt.count(d.index("b-1"))
    if bar_limit is not None and prompt_bars >= bar_limit:
        raise SampleError(f"the prompt already has {prompt_bars} bars, not fewer than {flag} {bar_limit}; "
                          f"use fewer --prompt-bars or a larger {flag}")
    if args.bars is not None:
        token_mask.reset(1)
        for tok in prompt:
            token_mask.update([tok])
        need = len(prompt) + token_mask.tokens_needed()[0]
        if need > args.max_length:
            raise SampleError(f"--bars {args.bars} needs at least {need} tokens (prompt included) but "
                              f"{args.max_length_flag} is {args.max_length}; raise {args.max_length_flag} or lower --bars")


def run(args) -> int:
    check_args(args)
    state = read_checkpoint(args.checkpoint)
    tok_cfg = load_tokenizer_config(args.data, state, args.checkpoint)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads or default_threads())
    try:
        return _run(args, state, tok_cfg)
    finally:
        torch.set_num_threads(threads_before)  # programmatic callers (tests) get their setting back


def half_batch_note(args, cpu_capability: Optional[str] = None) -> Optional[str]:
    """A note when half precision is asked for a batch on a CPU whose torch kernels emulate it (AVX2 or less):
    there a bf16/fp16 product of 8 rows is several times slower than fp32's (docs/benchmarks.md, "Sampling")."""
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if on_gpu or args.dtype == "fp32" or args.batch_size <= 1:
        return None
    capability = cpu_capability or torch.backends.cpu.get_cpu_capability()
    if "AVX512" in capability or "SVE" in capability:
        return None
    return (f"note: --dtype {args.dtype} with --batch-size {args.batch_size} on a {capability} CPU: half-precision "
            "batched products are emulated here and usually slower than fp32; try --dtype fp32 for batches")


def _run(args, state: dict, tok_cfg) -> int:
    model, task = load_model(args.checkpoint, args.data, resolve_device(args.device), state=state)
    model = model.to(DTYPES[args.dtype])
    vocab_source = f"{args.data}/dict.txt" if args.data else f"the dictionary saved in {args.checkpoint}"
    controls = parse_controls(args, task.dictionary.symbols, tok_cfg, vocab_source)
    note = half_batch_note(args)
    if note:
        print(note)
    d = task.dictionary
    prompt = prompt_ids(task, args.prompt_midi, args.prompt_bars, tok_cfg, vocab_source) if args.prompt_midi else []
    token_mask = build_token_mask(args, task, tok_cfg, controls)
    check_prompt(args, task, prompt, token_mask)

    from tqdm import tqdm

    from data_prep.grammar import count_errors
    from data_prep.tokens_to_midi import decode_tokens

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    new_total = args.num_samples * (args.max_length - len(prompt))
    written, tokens_total, grammar_errors, skips = 0, 0, 0, Counter()
    midi_paths: List[str] = []
    start = time.perf_counter()
    with tqdm(total=new_total, desc=f"sampling into {out_dir}", unit="tok", disable=None) as progress:
        for first in range(0, args.num_samples, args.batch_size):
            n = min(args.batch_size, args.num_samples - first)
            generators = [piece_generator(args.seed, first + k) for k in range(n)]
            pieces = sample_batch(model, task, prompt, generators, args, token_mask, progress)
            for k, ids in enumerate(pieces):
                tokens = [d[i] for i in ids]
                name = out_dir / f"sample_{first + k:03d}"
                Path(f"{name}.txt").write_text(" ".join(tokens) + "\n", encoding="utf-8")
                result = decode_tokens(tokens, tok_cfg)
                result.midi.dump(f"{name}.mid")
                midi_paths.append(f"{name}.mid")
                if args.analyze:
                    write_pianoroll(f"{name}.mid", tok_cfg.positions_per_beat)
                written += 1
                tokens_total += len(tokens)
                grammar_errors += count_errors(tokens, tok_cfg)
                skips.update(result.skipped)
    elapsed = time.perf_counter() - start
    new_tokens = tokens_total - written * len(prompt)
    threads = torch.get_num_threads()
    print(f"wrote {written} MIDI + token files to {out_dir}: {tokens_total} tokens "
          f"({len(prompt)} prompt tokens each), {new_tokens} sampled in {elapsed:.1f} s "
          f"({new_tokens / max(elapsed, 1e-9):.1f} tokens/s, {args.dtype}, {threads} thread{'s' * (threads > 1)})")
    mask_text = "grammar mask" if args.grammar_mask else "no grammar mask"
    if controls.active():
        mask_text += f"; controls: {controls.describe()}"
    skip_text = ", ".join(f"{r} {c}" for r, c in skips.most_common()) or "none"
    print(f"{mask_text}; grammar errors: {grammar_errors}; tokens skipped by the MIDI decoder: "
          f"{sum(skips.values())} ({skip_text})")
    if args.report is not None and midi_paths:
        write_run_report(args.report, midi_paths, tok_cfg.positions_per_beat, f"museformer-sample into {out_dir}")
    return 0 if written else 1


def write_run_report(report_dir: str, midi_paths: List[str], positions_per_beat: int, title: str) -> None:
    """--report: `museformer-analyze report` on this run's pieces (their x.txt token files give the grammar
    errors). Pieces without notes cannot be drawn: then a line says so, as --analyze does, and sampling still
    counts as done."""
    from museformer_analysis.report import NothingToReport, write_report

    try:
        page = write_report(midi_paths, report_dir, positions_per_beat=positions_per_beat, title=title)
    except NothingToReport as err:
        print(f"no report: {err}")
        return
    print(f"wrote {page}")


def write_pianoroll(midi_path: str, positions_per_beat: int) -> None:
    """--analyze: sample_NNN.mid -> sample_NNN.png; a sample without notes gets a message instead of a picture."""
    from museformer_analysis.piece import load_piece
    from museformer_analysis.plots import plot_pianoroll

    try:
        piece = load_piece(midi_path, positions_per_beat, remove_empty_bars=False)
    except ValueError as err:
        print(f"no piano roll for {midi_path}: {err}")
        return
    plot_pianoroll(piece, midi_path[: -len(".mid")] + ".png")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from museformer_plugin.cli_errors import MuseformerInputError  # after parsing: --help needs no fairseq

    try:
        return run(args)
    except (SampleError, CheckpointError, ControlError, MuseformerInputError) as err:
        print(f"museformer-sample: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
