"""`museformer-sample`: checkpoint → (prompt MIDI) → KV-cached incremental sampling → MIDI and token files.

    museformer-sample checkpoints/checkpoint_best.pt --data data-bin/lmd6remi --out samples --num-samples 4
    museformer-sample ckpt.pt --data data-bin/lmd6remi --out cont --num-samples 2 \\
        --prompt-midi song.mid --prompt-bars 8 --max-bars 64 --grammar-mask --seed 1

Each sample is written as ``sample_NNN.mid`` plus ``sample_NNN.txt`` (the tokens, one line, as museformer-prep
writes them). Sampling uses the cached decoder of ``incremental.py`` (one cached step per token, spec §7 explains
why the original was slow); the defaults follow the original's generation script: top-k 8 at temperature 1.0, up
to 20,480 tokens. The prompt is encoded with the data directory's ``tokenizer.json`` so that it matches training.
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

EPILOG = """examples:
  museformer-sample ckpt.pt --data data-bin/lmd6remi --out samples --num-samples 4
  museformer-sample ckpt.pt --data data-bin/lmd6remi --out cont --num-samples 2 \\
      --prompt-midi song.mid --prompt-bars 8 --max-bars 64 --grammar-mask --seed 1

The original sampled with top-k 8, temperature 1.0, at least 1,024 and at most 20,480 tokens
(pass --min-tokens 1024 to match it)."""


class SampleError(Exception):
    """Bad input (file, flag, checkpoint): reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="museformer-sample", description=__doc__.split("\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="fairseq checkpoint of a museformer_lm model (e.g. checkpoint_best.pt)")
    p.add_argument("--data", required=True,
                   help="data directory with the training dict.txt (and tokenizer.json) from museformer-prep")
    p.add_argument("--out", required=True, help="output folder for sample_NNN.mid / sample_NNN.txt")
    p.add_argument("--num-samples", type=int, default=1, help="number of pieces to generate (default 1)")
    p.add_argument("--prompt-midi", help="continue this MIDI file (encoded with the data dir's tokenizer.json)")
    p.add_argument("--prompt-bars", type=int, default=4,
                   help="with --prompt-midi: how many of its first bars form the prompt (default 4)")
    p.add_argument("--max-bars", type=int, default=None,
                   help="stop a piece after this many bars in total, prompt included (default: no bar limit)")
    p.add_argument("--max-tokens", type=int, default=20480,
                   help="longest piece in tokens, prompt included, BOS excluded (default 20480, the original's)")
    p.add_argument("--min-tokens", type=int, default=0,
                   help="end of song (</s>) is forbidden before this many tokens (default 0; the original: 1024)")
    p.add_argument("--top-k", type=int, default=8, help="sample among the k most likely tokens; 0 = all (default 8)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: keep the smallest set of tokens with probability >= p (default: off)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=1, help="random seed; the same seed gives the same pieces (default 1)")
    p.add_argument("--batch-size", type=int, default=1, help="pieces sampled together (default 1)")
    p.add_argument("--grammar-mask", action="store_true",
                   help="only allow tokens that keep the piece well-formed REMIGEN (d- after p-, v- after d-, "
                   "increasing onsets, ...), see museformer_plugin/grammar_mask.py")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run the model (default cpu)")
    p.add_argument("--analyze", action="store_true",
                   help="also write each sample's piano roll as sample_NNN.png beside its MIDI "
                   "(as `museformer-analyze pianoroll`; needs matplotlib)")
    return p


def check_args(args) -> None:
    for name in ("num_samples", "max_tokens", "batch_size", "prompt_bars"):
        if getattr(args, name) < 1:
            raise SampleError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_bars is not None and args.max_bars < 1:
        raise SampleError(f"--max-bars must be at least 1, got {args.max_bars}")
    if args.top_k < 0:
        raise SampleError(f"--top-k must be >= 0 (0 = no top-k filter), got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise SampleError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature <= 0:
        raise SampleError(f"--temperature must be > 0, got {args.temperature}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SampleError("--device cuda was given but torch sees no CUDA device; use --device cpu")
    dict_path = Path(args.data) / "dict.txt"
    if not dict_path.is_file():
        raise SampleError(f"no dict.txt in --data {args.data}; pass the data directory the model was trained on "
                          "(built by `museformer-prep all`)")
    if not Path(args.checkpoint).is_file():
        raise SampleError(f"checkpoint {args.checkpoint} does not exist")
    if args.prompt_midi is not None and not Path(args.prompt_midi).is_file():
        raise SampleError(f"--prompt-midi {args.prompt_midi} does not exist")


def load_tokenizer_config(data_dir: str):
    """The data dir's tokenizer.json (written by museformer-prep binarize); the defaults when it is absent."""
    from data_prep.config import TokenizerConfig

    path = Path(data_dir) / "tokenizer.json"
    if not path.is_file():
        print(f"note: {path} not found; decoding and prompt encoding use the default tokenizer config",
              file=sys.stderr)
        return TokenizerConfig()
    try:
        return TokenizerConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        raise SampleError(f"{path} is not a valid tokenizer config: {err}") from None


def load_model(checkpoint: str, data_dir: str, device: str = "cpu"):
    """(model in eval mode, task) from a fairseq checkpoint, with the dictionary of ``data_dir``."""
    from fairseq import checkpoint_utils
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import overwrite_args_by_name

    from . import model as _model  # noqa: F401  (registers the museformer_lm model)
    from . import task as _task  # noqa: F401  (registers the museformer_lm task)

    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
    except Exception as err:  # a corrupt or foreign file: say which, without a traceback
        raise SampleError(f"cannot read checkpoint {checkpoint}: {type(err).__name__}: {err}".splitlines()[0]) from None
    cfg = state.get("cfg")
    if cfg is None or cfg.get("task") is None or cfg.task.get("_name") != "museformer_lm":
        name = cfg.task.get("_name") if cfg is not None and cfg.get("task") is not None else None
        raise SampleError(f"{checkpoint} is not a museformer_lm checkpoint (its task is {name!r})")
    dictionary = Dictionary.load(os.path.join(data_dir, "dict.txt"))
    emb = state["model"].get("decoder.embed_tokens.weight")
    if emb is None or emb.size(0) != len(dictionary):
        size = None if emb is None else emb.size(0)
        raise SampleError(
            f"{checkpoint} was trained with a vocabulary of {size} symbols but {data_dir}/dict.txt has "
            f"{len(dictionary)}: pass the data directory the model was trained on")
    trained_on = str(cfg.task.get("data") or "").split(":")[0]  # the training data dir, if it still exists
    if trained_on and os.path.isfile(os.path.join(trained_on, "dict.txt")):
        other = Dictionary.load(os.path.join(trained_on, "dict.txt"))
        if other.symbols != dictionary.symbols:
            raise SampleError(f"{data_dir}/dict.txt differs from {trained_on}/dict.txt, the dictionary {checkpoint} "
                              "was trained with: pass that data directory")
    overwrite_args_by_name(cfg, {"data": data_dir})
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": data_dir}, state=state)
    model = models[0].to(device).eval()
    return model, task


def prompt_ids(task, midi_path: str, bars: int, tok_cfg) -> List[int]:
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
        raise SampleError(f"--prompt-midi {midi_path} encodes to tokens missing from {task.cfg.data}/dict.txt "
                          f"({', '.join(unknown[:5])}): the data dir was built with another tokenizer config")
    return [d.index(t) for t in tokens]


def filter_logits(logits: torch.Tensor, top_k: int, top_p: Optional[float]) -> torch.Tensor:
    """logits (B, V) with everything outside the top-k / top-p set at -inf."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample_batch(model, task, prompt: List[int], batch_size: int, args, generator: torch.Generator,
                 grammar=None, progress=None) -> List[List[int]]:
    """Sample ``batch_size`` pieces continuing ``prompt`` (ids, no BOS). Returns each piece's ids (no BOS/EOS)."""
    from .incremental import forward_incremental, reorder

    dec = model.decoder
    d = task.dictionary
    eos, bar = d.eos(), dec.bar_token
    device = next(model.parameters()).device
    seq = torch.tensor([[eos] + prompt] * batch_size, device=device)  # (B, 1 + prompt)
    pieces = [list(prompt) for _ in range(batch_size)]
    bars = [prompt.count(bar)] * batch_size
    alive = list(range(batch_size))  # piece index of each row
    state: dict = {}
    if grammar is not None:
        grammar.reset(batch_size)
        for tok in prompt:
            grammar.update([tok] * batch_size)
    special = torch.zeros(len(d), dtype=torch.bool, device=device)
    special[: d.nspecial] = True  # <s> <pad> </s> <unk> are never sampled (</s> is re-enabled below)
    while alive:
        logits = forward_incremental(dec, seq, state)[0][:, -1].float()  # (B, V)
        eos_logit = logits[:, eos].clone()
        logits = logits.masked_fill(special, float("-inf"))
        can_end = torch.tensor([len(pieces[i]) >= args.min_tokens for i in alive], device=device)
        logits[:, eos] = torch.where(can_end, eos_logit, torch.full_like(eos_logit, float("-inf")))
        if grammar is not None:
            allowed = grammar.mask().to(device)
            allowed[~can_end, eos] = False
            # a row with nothing allowed (cannot happen with a REMIGEN dictionary) falls back to no grammar mask
            allowed[~allowed.any(-1)] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
        logits = filter_logits(logits / args.temperature, args.top_k, args.top_p)
        probs = torch.softmax(logits, dim=-1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].tolist()  # CPU generator: reproducible
        if grammar is not None:
            grammar.update(nxt)
        keep = []
        for row, (i, tok) in enumerate(zip(alive, nxt)):
            if tok == eos:
                continue
            pieces[i].append(tok)
            bars[i] += tok == bar
            done = len(pieces[i]) >= args.max_tokens or (args.max_bars is not None and bars[i] >= args.max_bars)
            if not done:
                keep.append(row)
        if progress is not None:
            progress.update(len(alive))
        seq = torch.cat([seq, torch.tensor(nxt, device=device)[:, None]], dim=1)
        if len(keep) < len(alive):  # finished pieces leave the batch (their cache rows are dropped)
            if not keep:
                break
            order = torch.tensor(keep, device=device)
            reorder(dec, state, order)
            if grammar is not None:
                grammar.select(keep)
            seq = seq.index_select(0, order)
            alive = [alive[r] for r in keep]
    return pieces


def run(args) -> int:
    check_args(args)
    tok_cfg = load_tokenizer_config(args.data)
    model, task = load_model(args.checkpoint, args.data, args.device)
    d = task.dictionary
    prompt = prompt_ids(task, args.prompt_midi, args.prompt_bars, tok_cfg) if args.prompt_midi else []
    if len(prompt) >= args.max_tokens:
        raise SampleError(f"the prompt has {len(prompt)} tokens, not fewer than --max-tokens {args.max_tokens}; "
                          "use fewer --prompt-bars or a larger --max-tokens")
    if args.max_bars is not None and prompt.count(d.index("b-1")) >= args.max_bars:
        raise SampleError(f"the prompt already has {prompt.count(d.index('b-1'))} bars, not fewer than "
                          f"--max-bars {args.max_bars}")
    grammar = None
    if args.grammar_mask:
        from .grammar_mask import GrammarMask

        grammar = GrammarMask(d.symbols, d.eos(), tok_cfg)

    from tqdm import tqdm

    from data_prep.grammar import count_errors
    from data_prep.tokens_to_midi import decode_tokens

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    new_total = args.num_samples * (args.max_tokens - len(prompt))
    written, tokens_total, grammar_errors, skips = 0, 0, 0, Counter()
    start = time.perf_counter()
    with tqdm(total=new_total, desc=f"sampling into {out_dir}", unit="tok", disable=None) as bar:
        for first in range(0, args.num_samples, args.batch_size):
            n = min(args.batch_size, args.num_samples - first)
            pieces = sample_batch(model, task, prompt, n, args, generator, grammar, bar)
            for k, ids in enumerate(pieces):
                tokens = [d[i] for i in ids]
                name = out_dir / f"sample_{first + k:03d}"
                Path(f"{name}.txt").write_text(" ".join(tokens) + "\n", encoding="utf-8")
                result = decode_tokens(tokens, tok_cfg)
                result.midi.dump(f"{name}.mid")
                if args.analyze:
                    write_pianoroll(f"{name}.mid", tok_cfg.positions_per_beat)
                written += 1
                tokens_total += len(tokens)
                grammar_errors += count_errors(tokens, tok_cfg)
                skips.update(result.skipped)
    elapsed = time.perf_counter() - start
    new_tokens = tokens_total - written * len(prompt)
    print(f"wrote {written} MIDI + token files to {out_dir}: {tokens_total} tokens "
          f"({len(prompt)} prompt tokens each), {new_tokens} sampled in {elapsed:.1f} s "
          f"({new_tokens / max(elapsed, 1e-9):.1f} tokens/s)")
    skip_text = ", ".join(f"{r} {c}" for r, c in skips.most_common()) or "none"
    print(f"grammar errors: {grammar_errors}; tokens skipped by the MIDI decoder: {sum(skips.values())} ({skip_text})")
    return 0 if written else 1


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
    try:
        return run(args)
    except SampleError as err:
        print(f"museformer-sample: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
