"""Binarise train/valid/test text splits into a fairseq data dir with fairseq's own `fairseq-preprocess`.

The result is what `fairseq-train --task museformer_lm` reads: `{train,valid,test}.{bin,idx}` (one song per sample,
fairseq appends `</s>` to each), `dict.txt` (the complete vocabulary of the tokenizer config, from
`data_prep.vocab.write_dict`, so every data dir made with one config has the same ids), and `tokenizer.json`
(that config, so sampling and decoding later use the same settings).

fairseq is run as a subprocess (`python -m fairseq_cli.preprocess`), so this module imports neither fairseq nor
torch, and `museformer-prep --help` works without them.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .split import CONFIG_NAME, SPLITS
from .vocab import read_dict, write_dict


class FairseqMissingError(RuntimeError):
    """fairseq (the `fairseq-fixed` package) is not installed in this Python."""


@dataclass
class BinarizeResult:
    """Songs and tokens binarised per split (tokens exclude the `</s>` fairseq appends)."""

    dest_dir: Path
    dict_size: int = 0  # symbols in dict.txt, without fairseq's 4 specials
    songs: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    unknown: Counter = field(default_factory=Counter)  # token -> count of tokens not in dict.txt

    def summary(self) -> str:
        parts = [f"{s} {self.songs[s]} songs / {self.tokens[s]} tokens" for s in self.songs]
        text = f"binarised {', '.join(parts)} into {self.dest_dir} (dict.txt: {self.dict_size} symbols)"
        if self.unknown:
            text += f"; {sum(self.unknown.values())} tokens not in dict.txt became <unk>"
        return text


def require_fairseq() -> None:
    """Raise a clear error naming the set-up command when fairseq cannot be imported."""
    if importlib.util.find_spec("fairseq") is None or importlib.util.find_spec("fairseq_cli") is None:
        raise FairseqMissingError(
            f"binarising needs fairseq, which is not installed for {sys.executable}; run `make install` "
            "(it installs fairseq-fixed==0.12.3.1 with --no-deps after torch, see README \"Quick start\")"
        )


def count_songs(split_file: Path, vocab: set[str]) -> tuple[int, int, Counter]:
    """(songs, tokens, unknown-token counts) of one line-per-song text file."""
    songs = tokens = 0
    unknown: Counter = Counter()
    with open(split_file, encoding="utf-8") as f:
        for line in f:
            song = line.split()
            if not song:
                continue
            songs += 1
            tokens += len(song)
            unknown.update(t for t in song if t not in vocab)
    return songs, tokens, unknown


def binarize(
    split_dir: str | Path,
    dest_dir: str | Path,
    cfg=None,
    dict_path: str | Path | None = None,
    workers: int = 1,
    allow_unk: bool = False,
) -> BinarizeResult:
    """Run fairseq-preprocess on `split_dir/{train,valid,test}.txt`, writing into `dest_dir`.

    The dictionary is `dict_path` if given, else `write_dict(dest_dir/dict.txt, cfg)`. Tokens missing from the
    dictionary mean the splits were made with another tokenizer config; that is an error unless `allow_unk`.
    """
    split_dir, dest_dir = Path(split_dir), Path(dest_dir)
    require_fairseq()
    if cfg is None and dict_path is None:
        raise ValueError("binarize needs a tokenizer config or --dict PATH to know the vocabulary")
    if not (split_dir / "train.txt").is_file():
        raise FileNotFoundError(f"{split_dir}/train.txt does not exist; write the splits with `museformer-prep split`")
    dest_dir.mkdir(parents=True, exist_ok=True)
    if dict_path is None:
        dict_path = dest_dir / "dict.txt"
        write_dict(dict_path, cfg)
    dict_path = Path(dict_path)
    if not dict_path.is_file():
        raise FileNotFoundError(f"--dict {dict_path} does not exist; write one with `museformer-prep dict PATH`")
    symbols = read_dict(dict_path)
    vocab = set(symbols)
    result = BinarizeResult(dest_dir=dest_dir, dict_size=len(symbols))

    prefixes = []
    for split in SPLITS:
        split_file = split_dir / f"{split}.txt"
        if not split_file.is_file():
            continue
        songs, tokens, unknown = count_songs(split_file, vocab)
        if songs == 0:
            print(f"warning: {split_file} holds no songs; {split} is not binarised", file=sys.stderr)
            continue
        result.songs[split], result.tokens[split] = songs, tokens
        result.unknown.update(unknown)
        prefixes += [f"--{split}pref", str(split_file)]  # with --only-source the prefix is the file itself
    if result.unknown and not allow_unk:
        examples = ", ".join(f"{t} ({n}x)" for t, n in result.unknown.most_common(5))
        raise ValueError(
            f"{sum(result.unknown.values())} tokens in {split_dir} are not in {dict_path} (e.g. {examples}): the "
            "token files were made with another tokenizer config. Pass the same tokenizer options as for "
            "`encode`, or --allow-unk to map them to <unk>."
        )

    command = [
        sys.executable, "-m", "fairseq_cli.preprocess",
        "--only-source",
        "--srcdict", str(dict_path),
        *prefixes,
        "--destdir", str(dest_dir),
        "--workers", str(max(1, workers)),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"fairseq-preprocess failed (exit {proc.returncode}):\n{' '.join(command)}\n{tail}")
    for split in result.songs:
        for ext in ("bin", "idx"):
            if not (dest_dir / f"{split}.{ext}").is_file():
                raise RuntimeError(f"fairseq-preprocess ran but wrote no {dest_dir / f'{split}.{ext}'}")
    if cfg is not None:
        (dest_dir / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result
