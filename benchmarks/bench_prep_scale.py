"""Data at Lakh scale: `museformer-prep encode` on a real corpus, killed half way and resumed, against a clean run.

    .venv/bin/python benchmarks/bench_prep_scale.py ../shared/data/corpora/music21_all_14896.tgz --workers 2

Runs, one after the other, on the same files (run it alone on an idle machine; it prints `uptime` before and after):
1. a clean run into OUT/clean: wall time, files/s, tokens/s, failures by reason, peak RSS of the whole process
   tree (main + workers, sampled every 0.2 s) and of the main process, and the tree's RSS at 10 % and 90 % of
   the files (flat memory: results are streamed, not held);
2. the same command into OUT/killed, SIGKILLed (the process group, as a cluster's time limit does) once half of the
   files are journaled, then run again: how many it skipped, how long the rest took;
3. the two folders compared: every token file and manifest.json byte for byte.
The speed against MidiTok's REMI is `benchmarks/tokenize_vs_miditok.py` (one worker each, same files).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree_rss_mib(pid: int) -> tuple[float, float]:
    """(RSS of ``pid`` and all its descendants, RSS of ``pid`` alone) in MiB, from /proc."""
    def rss(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss(p)
        stack += children(p)
    return total / 1024, rss(pid) / 1024


class Watcher(threading.Thread):
    """Samples a process tree's RSS and the journal's length every 0.2 s."""

    def __init__(self, pid: int, journal: Path):
        super().__init__(daemon=True)
        self.pid, self.journal, self.samples, self.stop = pid, journal, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            tree, main = tree_rss_mib(self.pid)
            done = self.journal.read_bytes().count(b'"path"') if self.journal.is_file() else 0
            if tree:
                self.samples.append((time.perf_counter(), done, tree, main))
            self.stop.wait(0.2)


def encode_command(midi_dir: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "data_prep", "encode", str(midi_dir), str(out), "--workers", str(workers)]


def run_clean(midi_dir: Path, out: Path, workers: int, num_files: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(encode_command(midi_dir, out, workers), stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO)))
    watcher = Watcher(proc.pid, out / "manifest.jsonl")
    watcher.start()
    stdout, _ = proc.communicate()
    seconds = time.perf_counter() - start
    watcher.stop.set()
    watcher.join()
    manifest = json.loads((out / "manifest.json").read_text())

    def tree_at(fraction: float) -> float:
        after = [s for s in watcher.samples if s[1] >= fraction * num_files]
        return after[0][2] if after else float("nan")

    return {"seconds": seconds, "stdout": stdout.strip(), "manifest": manifest,
            "peak_tree_mib": max(s[2] for s in watcher.samples), "peak_main_mib": max(s[3] for s in watcher.samples),
            "tree_mib_10": tree_at(0.1), "tree_mib_90": tree_at(0.9)}


def run_killed_then_resumed(midi_dir: Path, out: Path, workers: int, num_files: int) -> dict:
    proc = subprocess.Popen(encode_command(midi_dir, out, workers), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    journal = out / "manifest.jsonl"
    while proc.poll() is None:
        if journal.is_file() and journal.read_bytes().count(b'"path"') >= num_files // 2:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        raise SystemExit("the run ended before it could be killed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    journaled = journal.read_bytes().count(b'"path"')
    start = time.perf_counter()
    resumed = subprocess.run(encode_command(midi_dir, out, workers), capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    return {"journaled_at_kill": journaled, "resume_seconds": time.perf_counter() - start,
            "resume_stdout": resumed.stdout.strip(), "returncode": resumed.returncode}


def digest_tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="a folder of MIDI files, or a .tgz of one")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--keep", metavar="DIR", help="keep the outputs in DIR (default: a temporary folder)")
    args = parser.parse_args()
    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        midi_dir = Path(args.corpus)
        if midi_dir.is_file():
            with tarfile.open(midi_dir) as tar:
                tar.extractall(work / "midi", filter="data")
            midi_dir = work / "midi"
        from data_prep.encode import find_midi_files

        num_files = len(find_midi_files(midi_dir))
        for name in ("clean", "killed"):
            shutil.rmtree(work / name, ignore_errors=True)
        print(f"{num_files} MIDI files under {midi_dir}; {args.workers} workers")

        clean = run_clean(midi_dir, work / "clean", args.workers, num_files)
        m = clean["manifest"]
        print(f"clean run: {clean['seconds']:.1f} s, {num_files / clean['seconds']:.1f} files/s, "
              f"{m['tokens'] / clean['seconds']:,.0f} tokens/s; {m['encoded']} encoded, {m['failed']} failed "
              f"{m['failures_by_reason']}; {m['tokens']:,} tokens")
        print(f"  peak RSS: {clean['peak_tree_mib']:.0f} MiB (process tree), {clean['peak_main_mib']:.0f} MiB "
              f"(main process); tree at 10 % of the files {clean['tree_mib_10']:.0f} MiB, at 90 % "
              f"{clean['tree_mib_90']:.0f} MiB")
        print(f"  its summary line: {clean['stdout']}")

        killed = run_killed_then_resumed(midi_dir, work / "killed", args.workers, num_files)
        print(f"killed at {killed['journaled_at_kill']} of {num_files} files journaled; resumed in "
              f"{killed['resume_seconds']:.1f} s (exit {killed['returncode']}): {killed['resume_stdout']}")
        a, b = digest_tree(work / "clean"), digest_tree(work / "killed")
        same = sum(a[k] == b.get(k) for k in a)
        print(f"compared: {len(a)} files in the clean folder, {len(b)} in the resumed one, {same} identical "
              f"(manifest.json {'identical' if a.get('manifest.json') == b.get('manifest.json') else 'DIFFERENT'})")
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0 if a == b else 1


if __name__ == "__main__":
    sys.exit(main())
