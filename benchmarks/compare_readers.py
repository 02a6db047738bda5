"""Do the two MIDI readers give the same tokens? Compares `--reader symusic` with miditoolkit, file by file.

    .venv/bin/python benchmarks/compare_readers.py /work/shared/data/midi

For each setting of benchmarks/golden_compat.py, prints the files whose tokens differ (first differing token) and
how many files the symusic path hands to miditoolkit because a channel changes program while a note sounds.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from data_prep.encode import find_midi_files  # noqa: E402
from data_prep import MidiEncodeError, encode_midi  # noqa: E402
from data_prep.midi_io import read_midi, scan_midi  # noqa: E402

from golden_compat import SETTINGS, first_diff  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("midi_dir", help="folder searched recursively for .mid/.midi files")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of " + ",".join(SETTINGS))
    args = ap.parse_args(argv)
    if not os.path.isdir(args.midi_dir):
        print(f"error: {args.midi_dir} is not a folder; pass the folder that holds the MIDI files.", file=sys.stderr)
        return 2
    paths = [os.path.join(args.midi_dir, rel) for rel in find_midi_files(Path(args.midi_dir))]
    fallback = sum(scan_midi(open(p, "rb").read()).program_change_during_note for p in paths)
    print(f"{fallback}/{len(paths)} files change a channel's program while one of its notes sounds "
          "(the symusic path reads them with miditoolkit)")
    differ_total = 0
    for name in args.settings.split(","):
        cfg = SETTINGS[name]
        same, diffs = 0, []
        for path in tqdm(paths, desc=f"readers {name}", unit="file", disable=None):
            out = []
            for reader in ("miditoolkit", "symusic"):
                try:
                    out.append(encode_midi(read_midi(path, reader=reader), cfg))
                except MidiEncodeError as e:
                    out.append(f"error {e.reason}")
            if out[0] == out[1]:
                same += 1
            elif isinstance(out[0], str) or isinstance(out[1], str):
                diffs.append(f"{os.path.relpath(path, args.midi_dir)}: miditoolkit {out[0][:3]}, symusic {out[1][:3]}")
            else:
                diffs.append(f"{os.path.relpath(path, args.midi_dir)}: {first_diff(out[1], out[0])} (ours = symusic)")
        print(f"{name}: identical tokens {same}/{len(paths)}")
        for d in diffs:
            print("   ", d)
        differ_total += len(diffs)
    return 0 if differ_total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
