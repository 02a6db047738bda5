"""Gather token files into fairseq's line-per-song text splits: train.txt, valid.txt and test.txt.

Two ways to decide which song goes where (spec §5 step 2):
- file lists, one relative MIDI path per line as in the original's `data/meta/{train,valid,test}.txt`. An entry
  `x.mid` means the token file `x.mid.txt` written by `museformer-prep encode`. A listed file without a token file
  (it failed to encode, or was never there) is counted and reported, not a crash as in the original;
- a seeded random split with ratios (default 8:1:1, the original's proportions), in which no split is empty once
  there are at least 3 songs.

Besides the three text files, `OUT_DIR/lists/{train,valid,test}.txt` records which file went where, in the same
format as the input lists, so `--lists OUT_DIR/lists` reproduces the split exactly.
"""
from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

SPLITS = ("train", "valid", "test")
TOKEN_SUFFIX = ".txt"
MANIFEST_NAME = "manifest.json"  # written by `museformer-prep encode` into its output folder
CONFIG_NAME = "tokenizer.json"  # the tokenizer config, carried from split to data-bin


@dataclass
class SplitResult:
    """Songs and tokens per split, plus what was left out and why."""

    songs: dict = field(default_factory=lambda: {s: 0 for s in SPLITS})
    tokens: dict = field(default_factory=lambda: {s: 0 for s in SPLITS})
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    missing: list = field(default_factory=list)  # list entries that have no token file

    def summary(self) -> str:
        parts = [f"{s} {self.songs[s]} songs / {self.tokens[s]} tokens" for s in SPLITS]
        text = ", ".join(parts)
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        return text


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'8,1,1' -> (8.0, 1.0, 1.0): train, valid, test weights."""
    try:
        ratios = tuple(float(x) for x in text.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"--ratios expects three non-negative numbers for train,valid,test like 8,1,1; got {text!r}")
    return ratios  # type: ignore[return-value]


def find_token_files(token_dir: str | Path) -> list[str]:
    """Relative POSIX paths of every token file (`*.txt`) under `token_dir`, sorted."""
    token_dir = Path(token_dir)
    if not token_dir.is_dir():
        raise FileNotFoundError(f"token folder {token_dir} does not exist; write it with `museformer-prep encode`")
    found = (p for p in token_dir.rglob("*") if p.is_file() and p.suffix.lower() == TOKEN_SUFFIX)
    return sorted(p.relative_to(token_dir).as_posix() for p in found)


def token_name(entry: str) -> str:
    """A list entry (a MIDI path such as `a/b.mid`) -> its token file name (`a/b.mid.txt`)."""
    entry = entry.strip().replace("\\", "/")
    return entry if entry.lower().endswith(TOKEN_SUFFIX) else entry + TOKEN_SUFFIX


def midi_name(token_file: str) -> str:
    """Inverse of `token_name`: `a/b.mid.txt` -> `a/b.mid`."""
    return token_file[: -len(TOKEN_SUFFIX)] if token_file.lower().endswith(TOKEN_SUFFIX) else token_file


def random_split(names: list[str], ratios=(8, 1, 1), seed: int = 1) -> dict[str, list[str]]:
    """Assign `names` to train/valid/test at random (seeded; the same names and seed give the same split).

    Valid and test get round(n * ratio / sum) songs, and at least one each when there are >= 3 songs and their
    ratio is non-zero; train gets the rest.
    """
    names = sorted(names)
    total = float(sum(ratios))
    n = len(names)
    counts = {}
    for split, ratio in zip(SPLITS[1:], ratios[1:]):
        count = int(n * ratio / total + 0.5)
        if n >= 3 and ratio > 0:
            count = max(count, 1)
        counts[split] = count
    if n >= 3 and ratios[0] > 0:
        # keep at least one training song: take it from the larger of valid/test
        while n - counts["valid"] - counts["test"] < 1:
            bigger = "valid" if counts["valid"] >= counts["test"] else "test"
            counts[bigger] -= 1
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    valid = shuffled[: counts["valid"]]
    test = shuffled[counts["valid"] : counts["valid"] + counts["test"]]
    train = shuffled[counts["valid"] + counts["test"] :]
    return {"train": sorted(train), "valid": sorted(valid), "test": sorted(test)}


def read_lists(lists_dir: str | Path) -> dict[str, list[str]]:
    """Read `{train,valid,test}.txt` (one MIDI path per line) and return token file names per split."""
    lists_dir = Path(lists_dir)
    assignment = {}
    for split in SPLITS:
        path = lists_dir / f"{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"--lists {lists_dir} has no {split}.txt; it needs train.txt, valid.txt and test.txt with one "
                "MIDI path per line (relative to the encoded folder)"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        assignment[split] = [token_name(line) for line in lines if line.strip()]
    return assignment


def read_song(path: Path) -> list[str]:
    """The tokens of one token file (one line of space-separated tokens; extra whitespace is ignored)."""
    return path.read_text(encoding="utf-8").split()


def copy_tokenizer_config(token_dir: Path, out_dir: Path) -> dict | None:
    """Carry the tokenizer config from the encode manifest (or a tokenizer.json) into `out_dir/tokenizer.json`."""
    manifest = token_dir / MANIFEST_NAME
    if manifest.is_file():
        config = json.loads(manifest.read_text(encoding="utf-8")).get("tokenizer")
        if config is not None:
            (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            return config
    if (token_dir / CONFIG_NAME).is_file():
        shutil.copyfile(token_dir / CONFIG_NAME, out_dir / CONFIG_NAME)
        return json.loads((token_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    return None


def write_split(token_dir: str | Path, out_dir: str | Path, assignment: dict[str, list[str]]) -> SplitResult:
    """Write one line per song to `out_dir/{split}.txt` for the token files in `assignment`, plus `out_dir/lists/`."""
    token_dir, out_dir = Path(token_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lists").mkdir(exist_ok=True)
    copy_tokenizer_config(token_dir, out_dir)
    result = SplitResult()
    seen: set[str] = set()
    total = sum(len(v) for v in assignment.values())
    with tqdm(total=total, desc=f"split -> {out_dir}", unit="file", disable=None) as bar:
        for split in SPLITS:
            with open(out_dir / f"{split}.txt", "w", encoding="utf-8") as data, open(
                out_dir / "lists" / f"{split}.txt", "w", encoding="utf-8"
            ) as listing:
                for name in assignment.get(split, []):
                    bar.update(1)
                    if name in seen:
                        result.skipped["listed twice"] += 1
                        continue
                    seen.add(name)
                    path = token_dir / name
                    if not path.is_file():
                        result.skipped["no token file"] += 1
                        result.missing.append(name)
                        continue
                    tokens = read_song(path)
                    if not tokens:
                        result.skipped["empty token file"] += 1
                        continue
                    data.write(" ".join(tokens) + "\n")
                    listing.write(midi_name(name) + "\n")
                    result.songs[split] += 1
                    result.tokens[split] += len(tokens)
    return result
