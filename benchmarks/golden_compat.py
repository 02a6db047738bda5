"""Compare our token strings with the original MidiProcessor's (golden files), per setting.

    .venv/bin/python benchmarks/golden_compat.py /work/shared/data/golden /work/shared/data/midi

GOLDEN_DIR holds one folder per setting (remigen2_lmd6, remigen2_general, remigen_general) with
`<folder>/<file>.mid.txt` token files and `failures.json` (files the original could not encode). For every
setting this prints identical files / compared, the first differing token of each mismatching file, and
whether we encode the files the original fails on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from data_prep import MidiEncodeError, TokenizerConfig, encode_midi  # noqa: E402

SETTINGS = {
    "remigen2_lmd6": TokenizerConfig(
        encoding="remigen2", instruments="lmd6", normalize_pitch=True, remove_empty_bars=True, ignore_ts=True
    ),
    "remigen2_general": TokenizerConfig(encoding="remigen2", instruments="general", remove_empty_bars=True),
    "remigen_general": TokenizerConfig(encoding="remigen", instruments="general", remove_empty_bars=True),
}


def first_diff(ours: list[str], gold: list[str]) -> str:
    n = min(len(ours), len(gold))
    j = next((k for k in range(n) if ours[k] != gold[k]), n)
    ctx = slice(max(0, j - 3), j + 4)
    return (
        f"at token {j} (ours {len(ours)} tokens, golden {len(gold)}): "
        f"ours {' '.join(ours[ctx])!r} vs golden {' '.join(gold[ctx])!r}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("golden_dir")
    ap.add_argument("midi_dir")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of settings")
    ap.add_argument("--reader", default="miditoolkit", choices=["miditoolkit", "symusic"])
    ap.add_argument("--quiet", action="store_true", help="print only the per-setting rates")
    args = ap.parse_args(argv)
    failures_path = os.path.join(args.golden_dir, "failures.json")
    failures = json.load(open(failures_path)) if os.path.exists(failures_path) else {}
    total_same = total = 0
    for name in args.settings.split(","):
        cfg = SETTINGS[name]
        gdir = os.path.join(args.golden_dir, name)
        golden_files = sorted(
            os.path.relpath(os.path.join(r, f), gdir) for r, _, fs in os.walk(gdir) for f in fs if f.endswith(".txt")
        )
        same, diffs, errors = 0, [], Counter()
        for rel in golden_files:
            midi_rel = rel[: -len(".txt")]
            gold = open(os.path.join(gdir, rel)).read().split()
            try:
                ours = encode_midi(os.path.join(args.midi_dir, midi_rel), cfg, reader=args.reader)
            except MidiEncodeError as e:
                errors[e.reason] += 1
                diffs.append(f"{midi_rel}: we fail ({e.reason}: {e})")
                continue
            if ours == gold:
                same += 1
            else:
                diffs.append(f"{midi_rel}: {first_diff(ours, gold)}")
        orig_fail = failures.get(name, {})
        we_encode = 0
        for midi_rel in orig_fail:
            try:
                encode_midi(os.path.join(args.midi_dir, midi_rel), cfg, reader=args.reader)
                we_encode += 1
            except MidiEncodeError:
                pass
        print(
            f"{name}: identical {same}/{len(golden_files)} files ({100 * same / max(1, len(golden_files)):.1f}%); "
            f"original failed on {len(orig_fail)}, we encode {we_encode} of them"
        )
        if not args.quiet:
            for d in diffs:
                print("   ", d)
        total_same += same
        total += len(golden_files)
    print(f"all settings: identical {total_same}/{total}")
    return 0 if total_same == total else 1


if __name__ == "__main__":
    sys.exit(main())
