"""Tokenizer speed: files/s of our REMIGEN2 encoder vs MidiTok's REMI (on symusic), MIDI loading included.

    .venv/bin/pip install miditok symusic          # benchmark only, not project dependencies
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenize_vs_miditok.py ../shared/data/midi --workers 1

Every method reads and tokenizes the same files from disk, one file per task, with the same number of processes.
The methods run interleaved in each repeat (so a machine whose load changes treats them alike); after a burn-in
on a few files, the median of `--repeats` runs is reported, with wall-clock files/s and, for --workers 1, CPU-time
files/s (less sensitive to other processes on a shared machine). Parsing alone (miditoolkit, symusic) is timed as a
reference: it bounds what any tokenizer built on that reader can reach.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

METHODS = {
    "ours (miditoolkit)": "ours_miditoolkit",
    "ours (symusic reader)": "ours_symusic",
    "MidiTok REMI (symusic)": "miditok_remi",
    "miditoolkit parse only": "parse_miditoolkit",
    "symusic parse only": "parse_symusic",
}
_STATE: dict = {}


def _setup() -> None:
    """Build every tokenizer once per process (not timed)."""
    import miditoolkit
    import symusic
    from miditok import REMI
    from miditok import TokenizerConfig as MidiTokConfig

    from data_prep.config import TokenizerConfig
    from data_prep.midi_to_tokens import encode_midi

    # closest REMI to our default config: all programs in one stream, tempo and time-signature tokens, velocities,
    # 12 positions per beat for the first 4 beats (as ours), coarser beyond
    remi = REMI(MidiTokConfig(use_programs=True, one_token_stream_for_programs=True, use_tempos=True,
                              use_time_signatures=True, beat_res={(0, 4): 12, (4, 12): 4}))
    cfg = TokenizerConfig()
    _STATE.update(
        ours_miditoolkit=lambda p: len(encode_midi(p, cfg, reader="miditoolkit")),
        ours_symusic=lambda p: len(encode_midi(p, cfg, reader="symusic")),
        miditok_remi=lambda p: len(remi.encode(symusic.Score(p)).ids),
        parse_miditoolkit=lambda p: len(miditoolkit.MidiFile(p).instruments),
        parse_symusic=lambda p: len(symusic.Score(p).tracks),
    )


def _run_one(job: tuple[str, str]) -> bool:
    method, path = job
    try:
        _STATE[method](path)
        return True
    except Exception:  # counted as a failure; the same files fail on every repeat
        return False


def time_method(method: str, files: list[str], pool) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, failures) for tokenizing every file once."""
    jobs = [(method, f) for f in files]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if pool is None:
        ok = [_run_one(j) for j in jobs]
    else:
        ok = list(pool.imap_unordered(_run_one, jobs, chunksize=1))
    return time.perf_counter() - wall0, time.process_time() - cpu0, ok.count(False)


def versions() -> str:
    from importlib.metadata import version

    names = ["miditok", "symusic", "miditoolkit", "mido", "numpy"]
    return f"Python {platform.python_version()}, " + ", ".join(f"{n} {version(n)}" for n in names)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Files/s of museformer-prep's encoder vs MidiTok REMI on the same MIDI files.",
        epilog="example:\n  OMP_NUM_THREADS=1 python benchmarks/tokenize_vs_miditok.py ../shared/data/midi --workers 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("midi_dir", help="folder searched recursively for *.mid / *.midi")
    parser.add_argument("--workers", type=int, default=1, help="processes per method (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method; the median is shown (default 1)")
    parser.add_argument("--methods", default=",".join(METHODS.values()),
                        help=f"comma-separated subset of {','.join(METHODS.values())}")
    args = parser.parse_args(argv)
    files = sorted(str(p) for p in Path(args.midi_dir).rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        print(f"no MIDI files under {args.midi_dir}", file=sys.stderr)
        return 2
    methods = [m for m in args.methods.split(",") if m]
    print(f"{len(files)} files, {args.workers} process(es), {args.repeats} repeat(s); {cpu_model()}, "
          f"{os.cpu_count()} CPUs; {versions()}")
    pool = multiprocessing.Pool(args.workers, _setup) if args.workers > 1 else None
    if pool is None:
        _setup()
    for method in methods:  # burn-in: imports, caches, first-call costs
        time_method(method, files[:5], pool)
    results: dict[str, list[tuple[float, float, int]]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for method in methods:
            results[method].append(time_method(method, files, pool))
    if pool is not None:
        pool.close()
        pool.join()

    names = {v: k for k, v in METHODS.items()}
    med = {m: (statistics.median(w for w, _, _ in r), statistics.median(c for _, c, _ in r)) for m, r in results.items()}
    serial = pool is None
    print("\n| method | files/s (wall) | files/s (CPU) | speed vs MidiTok REMI (wall) | (CPU) | failures |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        wall, cpu = med[method]
        spread = ""
        if args.repeats > 1:
            rates = [len(files) / w for w, _, _ in results[method]]
            spread = f" ({min(rates):.1f}-{max(rates):.1f})"
        cpu_rate = f"{len(files) / cpu:.1f}" if serial and cpu > 0 else "n/a"
        ratio_wall = ratio_cpu = "n/a"
        if "miditok_remi" in med:
            ratio_wall = f"{med['miditok_remi'][0] / wall:.2f}x"
            if serial and cpu > 0:
                ratio_cpu = f"{med['miditok_remi'][1] / cpu:.2f}x"
        print(f"| {names[method]} | {len(files) / wall:.1f}{spread} | {cpu_rate} | {ratio_wall} | {ratio_cpu} "
              f"| {results[method][0][2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
