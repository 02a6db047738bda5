"""museformer-prep binarize / all: fairseq-preprocess output loads, and every sample equals its token file."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from needs import require_fairseq

require_fairseq()

from data_prep.cli import main  # noqa: E402
from data_prep.config import TokenizerConfig  # noqa: E402
from data_prep.split import SPLITS  # noqa: E402
from data_prep.vocab import build_vocab  # noqa: E402
from midi_factory import make_song  # noqa: E402

from fairseq.data import Dictionary, data_utils  # noqa: E402


def make_midi_dir(root: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        rel = f"{'pop' if i % 2 else 'rock'}/song{i}.mid"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        make_song(num_bars=2 + i % 3, seed=i).dump(str(root / rel))
        names.append(rel)
    (root / "broken.mid").write_bytes(b"MThd\x00\x00")
    return names


def load_split(data_bin: Path, split: str):
    dictionary = Dictionary.load(str(data_bin / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(data_bin / split), dictionary)
    assert dataset is not None, f"{data_bin}/{split}.bin/.idx did not load"
    return dictionary, dataset


def assert_samples_equal_token_files(data_bin: Path, split_dir: Path, token_dir: Path) -> int:
    """Sample i of each split == the dictionary ids of the token file listed on line i, plus </s>."""
    checked = 0
    for split in SPLITS:
        names = (split_dir / "lists" / f"{split}.txt").read_text().split()
        dictionary, dataset = load_split(data_bin, split)
        assert len(dataset) == len(names)
        for i, name in enumerate(names):
            tokens = (token_dir / (name + ".txt")).read_text().split()
            expected = [dictionary.index(t) for t in tokens] + [dictionary.eos()]
            assert dictionary.unk() not in expected, f"{name} has tokens outside dict.txt"
            assert dataset[i].tolist() == expected, f"{split} sample {i} differs from {name}"
            checked += 1
    return checked


def test_binarize_matches_token_files(tmp_path, capsys):
    midi, tokens, split = tmp_path / "midi", tmp_path / "tokens", tmp_path / "split"
    names = make_midi_dir(midi, 6)
    args = ["--instruments", "lmd6", "--ignore-ts", "--remove-empty-bars"]
    assert main(["encode", str(midi), str(tokens), "--workers", "1", *args]) == 0
    assert main(["split", str(tokens), str(split)]) == 0
    assert json.loads((split / "tokenizer.json").read_text())["instruments"] == "lmd6"
    data_bin = tmp_path / "data-bin"
    assert main(["binarize", str(split), str(data_bin), "--workers", "1"]) == 0  # config from split/tokenizer.json
    assert "binarised train 4 songs" in capsys.readouterr().out
    cfg = TokenizerConfig(instruments="lmd6", ignore_ts=True, remove_empty_bars=True)
    assert json.loads((data_bin / "tokenizer.json").read_text()) == cfg.to_dict()
    dictionary = Dictionary.load(str(data_bin / "dict.txt"))
    assert dictionary.symbols[dictionary.nspecial :] == build_vocab(cfg), "dict.txt is the complete vocabulary"
    assert assert_samples_equal_token_files(data_bin, split, tokens) == len(names)


def test_binarize_rejects_tokens_outside_the_dict(tmp_path, capsys):
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.txt").write_text("s-9 t-30 o-0 i-0 p-60 d-6 v-20 b-1\n")
    # s- tokens do not exist with --ignore-ts: a config mismatch must fail before fairseq runs
    assert main(["binarize", str(split), str(tmp_path / "bin"), "--ignore-ts"]) == 2
    assert "s-9" in capsys.readouterr().err


def test_binarize_names_make_install_without_fairseq(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("fairseq") else real(name, *a))
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "train.txt").write_text("b-1\n")
    assert main(["binarize", str(tmp_path / "split"), str(tmp_path / "bin")]) == 2
    assert "make install" in capsys.readouterr().err


def test_all_end_to_end(tmp_path, capsys):
    midi, data_bin = tmp_path / "midi", tmp_path / "data-bin" / "demo"
    names = make_midi_dir(midi, 10)
    assert main(["all", str(midi), str(data_bin), "--encoding", "remigen", "--workers", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "10 encoded, 1 failed" in out and "binarised train 8 songs" in out
    for split in SPLITS:
        for ext in ("bin", "idx"):
            assert (data_bin / f"{split}.{ext}").is_file()
    manifest = json.loads((data_bin / "tokens" / "manifest.json").read_text())
    assert manifest["tokenizer"]["encoding"] == "remigen"
    assert json.loads((data_bin / "tokenizer.json").read_text()) == manifest["tokenizer"]
    assert assert_samples_equal_token_files(data_bin, data_bin / "split", data_bin / "tokens") == len(names)
    # with nothing encodable, `all` stops after encode with exit 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mid").write_bytes(b"")
    assert main(["all", str(bad), str(tmp_path / "bin2")]) == 1
    assert not (tmp_path / "bin2" / "train.bin").exists()
