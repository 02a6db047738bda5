"""museformer-prep encode at scale: resume, nothing half-written after a kill, per-file time limit, settings guard.

Every MIDI file is generated here (tests/midi_factory.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.cli import main
from data_prep.encode_manifest import JOURNAL_NAME
from midi_factory import make_song
from needs import FAIRSEQ_REASON, has_fairseq

REPO = Path(__file__).resolve().parents[1]


def write_songs(folder: Path, count: int, num_bars: int = 3, first_seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"song_{first_seed + i:03d}.mid"
        make_song(num_bars=num_bars, seed=first_seed + i).dump(str(folder / name))
        names.append(name)
    return names


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def midi_dir(tmp_path):
    root = tmp_path / "midi"
    write_songs(root, 4)
    return root


def test_a_second_run_skips_what_is_done_and_says_so(midi_dir, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert main(["encode", str(midi_dir), str(out), "--workers", "1"]) == 0
    first = tree_bytes(out)
    assert "4 encoded, 0 failed" in capsys.readouterr().out and not (out / JOURNAL_NAME).exists()

    assert main(["encode", str(midi_dir), str(out), "--workers", "1"]) == 0
    summary = capsys.readouterr().out
    assert "skipped 4 already encoded" in summary and "files/s" not in summary  # nothing was encoded again
    assert tree_bytes(out) == first

    write_songs(midi_dir, 1, first_seed=10)  # a new input, and a changed one
    make_song(num_bars=5, seed=99).dump(str(midi_dir / "song_001.mid"))
    assert main(["encode", str(midi_dir), str(out), "--workers", "1"]) == 0
    summary = capsys.readouterr().out
    assert "5 encoded" in summary and "skipped 3 already encoded" in summary and "2 files in" in summary

    assert main(["encode", str(midi_dir), str(out), "--workers", "1", "--overwrite"]) == 0
    summary = capsys.readouterr().out
    assert "skipped" not in summary and "5 files in" in summary


def test_failures_are_kept_unless_retried(midi_dir, tmp_path, capsys):
    (midi_dir / "broken.mid").write_text("not a MIDI file\n")
    out = tmp_path / "tokens"
    assert main(["encode", str(midi_dir), str(out), "--workers", "1"]) == 0
    assert "4 encoded, 1 failed (not_midi: 1)" in capsys.readouterr().out
    assert main(["encode", str(midi_dir), str(out), "--workers", "1"]) == 0
    assert "skipped 4 already encoded and 1 that failed before" in capsys.readouterr().out
    assert main(["encode", str(midi_dir), str(out), "--workers", "1", "--retry-failed"]) == 0
    assert "1 files in" in capsys.readouterr().out


def test_other_settings_on_an_existing_folder_are_refused(midi_dir, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert main(["encode", str(midi_dir), str(out), "--workers", "1", "--ignore-ts"]) == 0
    before = tree_bytes(out)
    capsys.readouterr()
    # the same command without the flag resumes with the folder's settings
    assert main(["encode", str(midi_dir), str(out), "--workers", "1"]) == 0
    assert "skipped 4 already encoded" in capsys.readouterr().out
    assert main(["encode", str(midi_dir), str(out), "--workers", "1", "--instruments", "lmd6"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "other tokenizer settings (instruments: 'general' -> 'lmd6')" in err and "--overwrite" in err
    assert tree_bytes(out) == before, "a refused run must change nothing"


def write_dense_midi(path: Path, steps: int, chord: int = 6, step: int = 120, ticks_per_beat: int = 480) -> None:
    """A one-track MIDI file of ``steps`` chords of ``chord`` notes, written as bytes (miditoolkit would take
    seconds to write the 40,000 steps of the time-limit test; encoding them takes ~2 s)."""
    def varlen(n: int) -> bytes:
        out = [n & 0x7F]
        while n > 0x7F:
            n >>= 7
            out.append(0x80 | (n & 0x7F))
        return bytes(reversed(out))

    track, sounding = bytearray(), []
    for s in range(steps + 1):
        delta = step if s else 0
        for pitch in sounding:  # note-offs of the previous chord, then the note-ons of this one
            track += varlen(delta) + bytes((0x80, pitch, 0))
            delta = 0
        sounding = [] if s == steps else [40 + (s * 7 + k * 5) % 48 for k in range(chord)]
        for pitch in sounding:
            track += varlen(delta) + bytes((0x90, pitch, 80))
            delta = 0
    track += b"\x00\xff\x2f\x00"  # end of track
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    path.write_bytes(header + ticks_per_beat.to_bytes(2, "big") + b"MTrk" + len(track).to_bytes(4, "big") + track)


def test_a_file_over_the_time_limit_is_recorded_and_the_others_encoded(tmp_path, capsys):
    midi_dir = tmp_path / "midi"
    write_songs(midi_dir, 3, num_bars=1)  # a few milliseconds each
    write_dense_midi(midi_dir / "huge.mid", steps=40000)  # 240,000 notes: about 2 s
    out = tmp_path / "tokens"
    assert main(["encode", str(midi_dir), str(out), "--workers", "1", "--file-timeout", "0.25"]) == 0
    assert "3 encoded, 1 failed (timeout: 1)" in capsys.readouterr().out
    entries = {e["path"]: e for e in json.loads((out / "manifest.json").read_text())["files"]}
    assert entries["huge.mid"]["reason"] == "timeout" and entries["huge.mid"]["status"] == "failed"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", *(f"song_{i:03d}.mid.txt" for i in range(3))]


def test_a_killed_run_resumes_to_the_same_outputs_as_one_clean_run(tmp_path):
    midi_dir = tmp_path / "midi"
    write_songs(midi_dir, 60, num_bars=8)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", "encode", str(midi_dir), str(killed),
                             "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    journal = killed / JOURNAL_NAME
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count('"path"') >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its worker, as a cluster's time limit does
    proc.wait()
    assert not (killed / "manifest.json").exists() and journal.is_file()
    done = list(killed.glob("*.txt"))  # whole token files only: the others are named *.txt.tmp-PID
    assert 5 <= len(done) < 60

    assert main(["encode", str(midi_dir), str(killed), "--workers", "2"]) == 0
    assert main(["encode", str(midi_dir), str(clean), "--workers", "1"]) == 0
    assert tree_bytes(killed) == tree_bytes(clean), "the token files and the manifest must equal one uninterrupted " \
        "run's, byte for byte (and no temporary file may be left)"


@pytest.mark.skipif(not has_fairseq(), reason=FAIRSEQ_REASON)
def test_all_resumes_its_encode_step(midi_dir, tmp_path, capsys):
    data_bin = tmp_path / "data-bin"
    assert main(["all", str(midi_dir), str(data_bin), "--workers", "1", "--instruments", "lmd6"]) == 0
    capsys.readouterr()
    assert main(["all", str(midi_dir), str(data_bin), "--workers", "1"]) == 0  # the folder's settings are kept
    out = capsys.readouterr().out
    assert "skipped 4 already encoded" in out and "binarised" in out
    assert json.loads((data_bin / "tokenizer.json").read_text())["instruments"] == "lmd6"
