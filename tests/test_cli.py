"""museformer-prep encode / decode / split / dict / corpus: outputs, manifest, summaries and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import miditoolkit
import pytest

from data_prep.cli import main, midi_output_name
from data_prep.config import TokenizerConfig
from data_prep.midi_to_tokens import encode_midi
from data_prep.split import SPLITS, random_split
from data_prep.vocab import build_vocab
from midi_factory import make_song

GOOD = ["a.mid", "sub/b.MID", "sub/deep/c.midi"]


def write_song(path: Path, num_bars: int = 3, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_song(num_bars=num_bars, seed=seed).dump(str(path))
    return path


@pytest.fixture
def midi_dir(tmp_path: Path) -> Path:
    """3 good files in nested folders (mixed-case suffixes), a text file posing as MIDI, a truncated file,
    an empty file, and a non-MIDI file that must be ignored."""
    root = tmp_path / "midi"
    for i, rel in enumerate(GOOD):
        write_song(root / rel, seed=i)
    (root / "not_midi.mid").write_text("this is not a MIDI file\n" * 10)
    whole = (root / "a.mid").read_bytes()
    (root / "sub" / "truncated.mid").write_bytes(whole[: len(whole) // 2])
    (root / "empty.mid").write_bytes(b"")
    (root / "readme.txt").write_text("ignored: not a MIDI suffix")
    return root


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_help_works_without_data():
    proc = subprocess.run([sys.executable, "-m", "data_prep", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in ("encode", "decode", "split", "binarize", "dict", "all", "corpus"):
        assert command in proc.stdout
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0


def test_encode_writes_token_files_manifest_and_summary(midi_dir, tmp_path, capsys):
    out = tmp_path / "tokens"
    (out).mkdir()
    (out / "empty.mid.txt").write_text("b-1\n")  # stale output of an earlier run: must disappear
    assert main(["encode", str(midi_dir), str(out), "--workers", "1"]) == 0
    summary = capsys.readouterr().out
    assert "3 encoded, 3 failed" in summary
    assert "empty_file: 1" in summary and "not_midi: 1" in summary

    cfg = TokenizerConfig()
    for rel in GOOD:
        token_file = out / (rel + ".txt")
        text = token_file.read_text()
        assert text.count("\n") == 1 and text.endswith("\n"), "one line per song"
        assert text.split() == encode_midi(midi_dir / rel, cfg)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))
    assert written == sorted(rel + ".txt" for rel in GOOD)

    manifest = manifest_of(out)
    assert manifest["tokenizer"] == cfg.to_dict()
    assert (manifest["encoded"], manifest["failed"]) == (3, 3)
    entries = {e["path"]: e for e in manifest["files"]}
    assert set(entries) == set(GOOD) | {"not_midi.mid", "sub/truncated.mid", "empty.mid"}
    for rel in GOOD:
        assert entries[rel]["status"] == "encoded"
        assert entries[rel]["tokens"] == len((out / (rel + ".txt")).read_text().split())
    assert entries["empty.mid"]["reason"] == "empty_file"
    assert entries["not_midi.mid"]["reason"] == "not_midi"
    assert entries["sub/truncated.mid"]["status"] == "failed"
    assert entries["sub/truncated.mid"]["reason"] in ("truncated", "unreadable")
    assert sum(manifest["failures_by_reason"].values()) == 3
    assert manifest["tokens"] == sum(e["tokens"] for e in manifest["files"])


def test_encode_options_and_workers_give_the_same_files(midi_dir, tmp_path):
    args = ["--encoding", "remigen", "--instruments", "lmd6", "--ignore-ts", "--remove-empty-bars"]
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["encode", str(midi_dir), str(serial), "--workers", "1", *args]) == 0
    assert main(["encode", str(midi_dir), str(parallel), "--workers", "2", *args]) == 0
    cfg = TokenizerConfig(encoding="remigen", instruments="lmd6", ignore_ts=True, remove_empty_bars=True)
    assert manifest_of(parallel)["tokenizer"] == cfg.to_dict()
    assert manifest_of(serial)["files"] == manifest_of(parallel)["files"]
    for rel in GOOD:
        tokens = (parallel / (rel + ".txt")).read_text().split()
        assert tokens == (serial / (rel + ".txt")).read_text().split() == encode_midi(midi_dir / rel, cfg)
        assert not any(t.startswith("s-") for t in tokens)


def test_encode_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mid").write_bytes(b"")
    (bad / "y.midi").write_text("MThd? no")
    assert main(["encode", str(bad), str(tmp_path / "out")]) == 1  # nothing encoded
    assert "0 encoded, 2 failed" in capsys.readouterr().out
    assert main(["encode", str(tmp_path / "missing"), str(tmp_path / "out2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "no_midi").mkdir()
    assert main(["encode", str(tmp_path / "no_midi"), str(tmp_path / "out3")]) == 2
    assert main(["encode", str(bad), str(tmp_path / "out4"), "--positions-per-beat", "0"]) == 2


def test_decode_round_trip_uses_the_manifest_config(midi_dir, tmp_path, capsys):
    tokens, decoded = tmp_path / "tokens", tmp_path / "decoded"
    assert main(["encode", str(midi_dir), str(tokens), "--encoding", "remigen", "--workers", "1"]) == 0
    assert main(["decode", str(tokens), str(decoded)]) == 0  # config comes from tokens/manifest.json
    assert "3 MIDI files written" in capsys.readouterr().out
    cfg = TokenizerConfig(encoding="remigen")
    for rel in GOOD:
        midi = decoded / midi_output_name(rel + ".txt")
        assert midi.name == Path(rel).name
        assert encode_midi(midi, cfg) == (tokens / (rel + ".txt")).read_text().split()


def test_decode_single_file_reports_malformed_tokens(tmp_path, capsys):
    song = tmp_path / "song.txt"
    song.write_text("s-9 t-35 o-0 i-0 p-60 d-6 v-20 d-6 zz-3 p-62 d-6 v-20 b-1\n")
    assert main(["decode", str(song), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 MIDI files written" in out and "malformed tokens skipped" in out
    midi = miditoolkit.MidiFile(str(tmp_path / "out" / "song.mid"))
    assert sorted(n.pitch for inst in midi.instruments for n in inst.notes) == [60, 62]
    assert main(["decode", str(tmp_path / "nothing_here"), str(tmp_path / "out")]) == 2


def test_midi_output_name():
    assert midi_output_name("a/x.mid.txt") == "a/x.mid"
    assert midi_output_name("x.MIDI.txt") == "x.MIDI"
    assert midi_output_name("sample_3.txt") == "sample_3.mid"
    assert midi_output_name("sample") == "sample.mid"


def fake_token_dir(root: Path, n: int) -> list[str]:
    """n token files (distinct tiny songs) in two folders; returns their MIDI names."""
    names = []
    for i in range(n):
        rel = f"{'x' if i % 2 else 'y'}/song{i:02d}.mid"
        (root / (rel + ".txt")).parent.mkdir(parents=True, exist_ok=True)
        (root / (rel + ".txt")).write_text(f"t-30 o-0 i-0 p-{40 + i} d-6 v-20 b-1\n")
        names.append(rel)
    return names


def read_split(out: Path) -> dict[str, list[str]]:
    return {s: (out / f"{s}.txt").read_text().splitlines() for s in SPLITS}


def test_random_split_is_seeded_8_1_1_and_complete(tmp_path):
    tokens = tmp_path / "tokens"
    names = fake_token_dir(tokens, 20)
    assert main(["split", str(tokens), str(tmp_path / "s1"), "--seed", "7"]) == 0
    assert main(["split", str(tokens), str(tmp_path / "s2"), "--seed", "7"]) == 0
    first = read_split(tmp_path / "s1")
    assert first == read_split(tmp_path / "s2"), "same seed, same split"
    assert [len(first[s]) for s in SPLITS] == [16, 2, 2]
    lists = {s: (tmp_path / "s1" / "lists" / f"{s}.txt").read_text().split() for s in SPLITS}
    assert sorted(sum(lists.values(), [])) == sorted(names), "every song in exactly one split"
    for split in SPLITS:  # line i of a split is the song listed on line i of lists/<split>.txt
        for name, line in zip(lists[split], first[split]):
            assert line == (tokens / (name + ".txt")).read_text().strip()
    # the written lists reproduce the split
    assert main(["split", str(tokens), str(tmp_path / "s3"), "--lists", str(tmp_path / "s1" / "lists")]) == 0
    assert read_split(tmp_path / "s3") == first


def test_random_split_never_empty_from_three_songs():
    for n in range(3, 40):
        names = [f"s{i}.mid.txt" for i in range(n)]
        parts = random_split(names, (8, 1, 1), seed=n)
        assert all(parts[s] for s in SPLITS), n
        assert sorted(sum(parts.values(), [])) == sorted(names)
    assert random_split([f"s{i}" for i in range(100)], (8, 1, 1), 1)["valid"] == random_split(
        [f"s{i}" for i in reversed(range(100))], (8, 1, 1), 1)["valid"], "independent of input order"


def test_split_from_lists_reports_missing_files(tmp_path, capsys):
    tokens = tmp_path / "tokens"
    names = fake_token_dir(tokens, 6)
    lists = tmp_path / "meta"
    lists.mkdir()
    (lists / "train.txt").write_text("\n".join(names[:4] + ["gone/missing.mid"]) + "\n")
    (lists / "valid.txt").write_text(names[4] + "\n")
    (lists / "test.txt").write_text(names[5] + ".txt\n")  # a token file name is accepted as well
    assert main(["split", str(tokens), str(tmp_path / "out"), "--lists", str(lists)]) == 0
    captured = capsys.readouterr()
    assert "no token file: 1" in captured.out and "gone/missing.mid.txt" in captured.err
    parts = read_split(tmp_path / "out")
    assert [len(parts[s]) for s in SPLITS] == [4, 1, 1]
    assert parts["valid"] == [(tokens / (names[4] + ".txt")).read_text().strip()]

    (lists / "valid.txt").unlink()
    assert main(["split", str(tokens), str(tmp_path / "out2"), "--lists", str(lists)]) == 2
    assert "valid.txt" in capsys.readouterr().err
    assert main(["split", str(tokens), str(tmp_path / "out3"), "--ratios", "8,1"]) == 2


def test_dict_command_matches_vocab(tmp_path):
    path = tmp_path / "d" / "dict.txt"
    assert main(["dict", str(path), "--instruments", "lmd6", "--ignore-ts"]) == 0
    symbols = [line.split()[0] for line in path.read_text().splitlines()]
    assert symbols == build_vocab(TokenizerConfig(instruments="lmd6", ignore_ts=True))


def test_corpus_music21_limit(tmp_path, capsys):
    pytest.importorskip("music21")
    out = tmp_path / "corpus"
    assert main(["corpus", "music21", str(out), "--limit", "3", "--workers", "1"]) == 0
    assert "3 MIDI files written" in capsys.readouterr().out
    files = sorted(out.rglob("*.mid"))
    assert len(files) == 3
    for path in files:
        midi = miditoolkit.MidiFile(str(path))
        assert len(midi.instruments) >= 2, "the Bach chorales have several voices"
        assert len(encode_midi(path, TokenizerConfig())) > 100
    assert main(["corpus", "music21", str(out), "--limit", "3", "--workers", "1"]) == 0
    assert "0 MIDI files written, 3 already there" in capsys.readouterr().out


def test_split_takes_the_songs_of_the_encode_manifest(midi_dir, tmp_path):
    tokens = tmp_path / "tokens"
    assert main(["encode", str(midi_dir), str(tokens), "--workers", "1"]) == 0
    (tokens / "stale.mid.txt").write_text("b-1\n")  # left over from an earlier run, not in the manifest
    assert main(["split", str(tokens), str(tmp_path / "split")]) == 0
    listed = sum(((tmp_path / "split" / "lists" / f"{s}.txt").read_text().split() for s in SPLITS), [])
    assert sorted(listed) == sorted(GOOD)
    assert (tmp_path / "split" / "tokenizer.json").is_file()
