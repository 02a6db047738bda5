"""build_vocab / write_dict: complete, deterministic, contiguous families, readable by fairseq."""
from __future__ import annotations

import itertools

import pytest

from data_prep import TokenizerConfig, build_vocab, encode_midi, write_dict
from data_prep.vocab import FAMILIES, read_dict
from midi_factory import make_midi, make_song

CFGS = {
    "general": TokenizerConfig(),
    "lmd6_nots": TokenizerConfig(instruments="lmd6", ignore_ts=True),
    "remigen_P16": TokenizerConfig(encoding="remigen", positions_per_beat=16),
}


def test_general_vocab_layout():
    v = build_vocab(TokenizerConfig())
    fam_sizes = {k: len(list(g)) for k, g in itertools.groupby(t.split("-")[0] for t in v)}
    assert fam_sizes == {"b": 1, "o": 96, "i": 129, "p": 256, "d": 96, "v": 32, "s": 254, "t": 49}
    assert v[:2] == ["b-1", "o-0"] and v[-1] == "t-48"
    assert len(v) == len(set(v)) == 913


def test_lmd6_vocab_has_only_the_lmd6_instruments_and_no_ts():
    v = build_vocab(TokenizerConfig(instruments="lmd6", ignore_ts=True))
    assert [t for t in v if t.startswith("i-")] == ["i-0", "i-25", "i-32", "i-43", "i-48", "i-80", "i-128"]
    assert not any(t.startswith("s-") for t in v)


@pytest.mark.parametrize("name", list(CFGS), ids=list(CFGS))
def test_families_are_contiguous_and_ordered(name):
    v = build_vocab(CFGS[name])
    runs = [k for k, _ in itertools.groupby(t.split("-")[0] for t in v)]
    assert len(runs) == len(set(runs)), f"a family is split: {runs}"
    assert runs == [f for f in FAMILIES if f in runs]
    assert build_vocab(CFGS[name]) == v  # deterministic


@pytest.mark.parametrize("name", list(CFGS), ids=list(CFGS))
def test_vocab_covers_everything_the_encoder_emits(name):
    cfg = CFGS[name]
    v = set(build_vocab(cfg))
    extreme = make_midi(None, [
        (0, True, [(0, 10, 0, 127), (0, 10, 127, 0)]),
        (127, False, [(0, 480 * 5000, 127, 127), (1, 2, 0, 0)]),
    ], tempos=[(0, 1.0)], time_signatures=[(0, 16, 8)])
    used = set(encode_midi(make_song(6, seed=7), cfg)) | set(encode_midi(extreme, cfg))
    assert used <= v, sorted(used - v)
    assert "o-95" in build_vocab(TokenizerConfig()) and "o-127" in build_vocab(CFGS["remigen_P16"])


@pytest.mark.parametrize("name", list(CFGS), ids=list(CFGS))
def test_write_then_read_dict(tmp_path, name):
    cfg = CFGS[name]
    path = tmp_path / "dict.txt"
    written = write_dict(path, cfg)
    assert written == build_vocab(cfg) == read_dict(path)
    lines = path.read_text().splitlines()
    assert all(len(line.split(" ")) == 2 and line.split(" ")[1].isdigit() for line in lines)


def test_fairseq_dictionary_loads_our_dict(tmp_path):
    from needs import require_fairseq

    fairseq_data = require_fairseq().data
    cfg = TokenizerConfig()
    write_dict(tmp_path / "dict.txt", cfg)
    d = fairseq_data.Dictionary.load(str(tmp_path / "dict.txt"))
    assert len(d) == 4 + len(build_vocab(cfg))  # <s> <pad> </s> <unk> first
    assert d.index("b-1") == 4 and d.symbols[4:] == build_vocab(cfg)
    assert d.index("s-9") != d.unk()


def test_read_dict_splits_lines_as_fairseq_does(tmp_path):
    """One reader of dict.txt (binarize uses it too): the symbol is all but the last field, and fairseq's optional
    ``#fairseq:overwrite`` flag is not part of it."""
    path = tmp_path / "dict.txt"
    path.write_text("b-1 5\no-0 1 #fairseq:overwrite\n\np-60 7\n", encoding="utf-8")
    assert read_dict(path) == ["b-1", "o-0", "p-60"]
