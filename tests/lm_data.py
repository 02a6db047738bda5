"""Tiny binarised REMIGEN2 datasets for tests: ``make_data_bin(tmp_dir)`` → a fairseq data dir.

The songs are synthetic but follow the REMIGEN2 grammar (spec §1.2): per bar ``t-TEMPO``, then for each onset
``o-POS`` and per instrument ``i-INST`` followed by ``p-PITCH d-DUR v-VEL`` notes, then ``b-1``. Songs repeat a few
bar patterns (like real music, so a model can learn something in a few updates). The dictionary has the layout of
the original's dict.txt (b, o, i, p, d, v, t families) and is binarised with fairseq-preprocess, as museformer-prep
does.

    from lm_data import make_data_bin
    data_dir = make_data_bin(tmp_path, num_songs=40, seed=0)   # {train,valid,test}.{bin,idx} + dict.txt
"""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path
from typing import Dict, List, Sequence

# Let the tests import the plugin from a plain checkout (before `pip install -e .`).
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

INSTRUMENTS = (0, 25, 43, 48, 80, 128)  # the lmd6 set (spec §1.4)


def dict_symbols() -> List[str]:
    """REMIGEN2 symbols in the original dict.txt's family order (P = 12: 96 onsets, 96 durations)."""
    return (
        ["b-0", "b-1"]
        + [f"o-{k}" for k in range(96)]
        + [f"i-{k}" for k in INSTRUMENTS]
        + [f"p-{k}" for k in range(256)]
        + [f"d-{k}" for k in range(96)]
        + [f"v-{k}" for k in range(32)]
        + [f"t-{k}" for k in range(49)]
    )


def write_dict(path: Path, symbols: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for sym in symbols:
            f.write(f"{sym} 1\n")


def random_bar(rng: random.Random, tempo: int) -> List[str]:
    """One 4/4 bar (48 positions at P = 12) with 1–4 onsets."""
    tokens = [f"t-{tempo}"]
    onsets = sorted(rng.sample(range(0, 48, 6), rng.randint(1, 4)))
    for pos in onsets:
        tokens.append(f"o-{pos}")
        for inst in sorted(rng.sample(INSTRUMENTS, rng.randint(1, 2))):
            tokens.append(f"i-{inst}")
            base = 164 if inst == 128 else 48 + 12 * rng.randint(0, 2)
            for pitch in sorted(rng.sample(range(base, base + 12), rng.randint(1, 2)), reverse=True):
                tokens += [f"p-{pitch}", f"d-{rng.choice((6, 12, 24))}", f"v-{rng.randint(16, 24)}"]
    tokens.append("b-1")
    return tokens


def random_song(rng: random.Random, min_bars: int = 4, max_bars: int = 12) -> List[str]:
    """A song built from 2–3 bar patterns repeated in an AABA-like order."""
    tempo = rng.randint(30, 40)
    patterns = [random_bar(rng, tempo) for _ in range(rng.randint(2, 3))]
    num_bars = rng.randint(min_bars, max_bars)
    tokens: List[str] = []
    for b in range(num_bars):
        tokens += patterns[(b // 2) % len(patterns)]
    return tokens


def binarize(tmp_dir, splits: Dict[str, List[List[str]]], symbols: Sequence[str] = None) -> Path:
    """Write ``{split}.txt`` (one song per line) and dict.txt, run fairseq-preprocess; returns the data dir."""
    tmp_dir = Path(tmp_dir)
    raw, data_dir = tmp_dir / "raw", tmp_dir / "data-bin"
    raw.mkdir(parents=True, exist_ok=True)
    write_dict(raw / "dict.txt", dict_symbols() if symbols is None else symbols)
    args = ["--only-source", "--srcdict", str(raw / "dict.txt"), "--destdir", str(data_dir), "--workers", "1"]
    for split, songs in splits.items():
        with open(raw / f"{split}.txt", "w", encoding="utf-8") as f:
            for song in songs:
                f.write(" ".join(song) + "\n")
        args += [f"--{split}pref", str(raw / f"{split}.txt")]
    run_preprocess(args)
    return data_dir


def run_preprocess(args: List[str]) -> None:
    """``fairseq-preprocess ARGS`` in this process (a subprocess would pay fairseq's import time again)."""
    from fairseq import options
    from fairseq_cli import preprocess

    log = logging.getLogger(preprocess.__name__)
    handlers = list(log.handlers)
    try:
        preprocess.main(options.get_preprocessing_parser().parse_args(args))
    finally:
        for handler in log.handlers[len(handlers):]:  # main() adds a FileHandler per call
            log.removeHandler(handler)
            handler.close()


def make_data_bin(tmp_dir, num_songs: int = 40, seed: int = 0, min_bars: int = 4, max_bars: int = 12) -> Path:
    """A data dir with ``num_songs`` training songs and ``max(4, num_songs // 8)`` valid and test songs each."""
    rng = random.Random(seed)
    n_eval = max(4, num_songs // 8)
    splits = {
        "train": [random_song(rng, min_bars, max_bars) for _ in range(num_songs)],
        "valid": [random_song(rng, min_bars, max_bars) for _ in range(n_eval)],
        "test": [random_song(rng, min_bars, max_bars) for _ in range(n_eval)],
    }
    return binarize(tmp_dir, splits)


def make_task(data_dir, **overrides):
    """A ``museformer_lm`` task on ``data_dir`` built without the fairseq CLI (config overrides as kwargs)."""
    from museformer_plugin.task import MuseformerLMConfig, MuseformerLMTask

    cfg = MuseformerLMConfig(data=str(data_dir), seed=1, dataset_impl=None, **overrides)
    return MuseformerLMTask.setup_task(cfg)


def make_model(task, impl: str = "dense", seed: int = 0, **overrides):
    """A ``museformer_lm_tiny``-sized model for ``task`` (eval mode), without the fairseq CLI."""
    import torch

    from museformer_plugin.model import MuseformerLanguageModel, MuseformerModelConfig

    sizes = dict(decoder_layers=2, decoder_embed_dim=64, decoder_ffn_embed_dim=128, decoder_attention_heads=4)
    sizes.update(overrides)
    cfg = MuseformerModelConfig(attention_impl=impl, max_target_positions=task.cfg.tokens_per_sample, **sizes)
    torch.manual_seed(seed)
    return MuseformerLanguageModel.build_model(cfg, task).eval()
