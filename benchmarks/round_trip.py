"""Round-trip rate on real MIDI: tokens -> decode -> MIDI file -> encode gives the same tokens?

    .venv/bin/python benchmarks/round_trip.py /work/shared/data/midi

For every MIDI file under MIDI_DIR and every setting (the three golden settings of benchmarks/golden_compat.py),
this encodes the file, decodes the tokens, writes the decoded MidiFile to a MIDI file in memory, reads it back
with the same reader and encodes it again. It prints, per setting:
- identical: files whose tokens come back unchanged;
- overlaps resolved: files on which the decoder resolved same-pitch overlaps (docs/tokenizer.md, "Decoding"),
  with the number of notes dropped / shortened;
- explained: files whose changed tokens are exactly those overlaps (only `d-` values of shortened notes
  changed, and the `p- d- v-` triples of dropped notes removed);
- stable: files on which a second round trip gives back the first round trip's tokens.
Files the encoder rejects are counted by reason and left out of the rates.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from data_prep.encode import find_midi_files  # noqa: E402
from data_prep import MidiEncodeError, decode_tokens, encode_midi  # noqa: E402
from data_prep.midi_io import READERS, read_midi  # noqa: E402

from golden_compat import SETTINGS  # noqa: E402


def through_file(tokens: list[str], cfg, reader: str, tmp: str) -> tuple[list[str], Counter]:
    """decode -> MIDI file `tmp` -> read -> encode; returns the new tokens and the decoder's resolved overlaps."""
    res = decode_tokens(tokens, cfg)
    res.midi.dump(tmp)
    return encode_midi(read_midi(tmp, reader=reader), cfg), Counter(getattr(res, "resolved", Counter()))


def _notes(tokens: list[str]) -> tuple[list[str], Counter]:
    """The tokens other than p-/d-/v- (bars, onsets, tempi, instruments), and every note as
    (number of such tokens before it, p-, d-, v-)."""
    skeleton, notes, pending = [], Counter(), []
    for tok in tokens:
        if tok[:2] in ("p-", "d-", "v-"):
            pending.append(tok)
            if len(pending) == 3:
                notes[(len(skeleton), *pending)] += 1
                pending = []
        else:
            skeleton.append(tok)
    return skeleton, notes


def explained(before: list[str], after: list[str], resolved: Counter) -> bool:
    """True when `after` differs from `before` only in the notes the decoder says it resolved: the same bars,
    onsets, tempi and instruments; `resolved["same_onset"]` notes gone; at most `resolved["shortened"]` notes
    with another d- and nothing else changed."""
    skel_a, notes_a = _notes(before)
    skel_b, notes_b = _notes(after)
    if skel_a != skel_b:
        return False
    gone, new = notes_a - notes_b, notes_b - notes_a
    changed = 0
    for (ctx, p, d, v), k in new.items():  # a shortened note: same place, pitch and velocity, another d-
        for _ in range(k):
            match = next((key for key in gone if key[0] == ctx and key[1] == p and key[3] == v and key[2] != d), None)
            if match is None:
                return False
            gone[match] -= 1
            gone += Counter()  # drop zero counts
            changed += 1
    # a shortened note can keep its d- (the gap falls into the same duration bin), so <= there
    return sum(gone.values()) == resolved["same_onset"] and changed <= resolved["shortened"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("midi_dir", help="folder searched recursively for .mid/.midi files")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of " + ",".join(SETTINGS))
    ap.add_argument("--reader", default="miditoolkit", choices=READERS)
    ap.add_argument("--verbose", action="store_true", help="list every file that does not round-trip")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.midi_dir):
        print(f"error: {args.midi_dir} is not a folder; pass the folder that holds the MIDI files.", file=sys.stderr)
        return 2
    paths = [os.path.join(args.midi_dir, rel) for rel in find_midi_files(Path(args.midi_dir))]
    tmp = os.path.join(tempfile.mkdtemp(prefix="round_trip_"), "decoded.mid")
    for name in args.settings.split(","):
        cfg = SETTINGS[name]
        n = same = with_overlaps = expl = stable = 0
        resolved_total, errors, bad = Counter(), Counter(), []
        for path in tqdm(paths, desc=f"round trip {name}", unit="file", disable=None):
            try:
                tokens = encode_midi(path, cfg, reader=args.reader)
            except MidiEncodeError as e:
                errors[e.reason] += 1
                continue
            n += 1
            once, resolved = through_file(tokens, cfg, args.reader, tmp)
            twice, resolved2 = through_file(once, cfg, args.reader, tmp)
            same += once == tokens
            with_overlaps += sum(resolved.values()) > 0
            resolved_total.update(resolved)
            expl += once == tokens or explained(tokens, once, resolved)
            stable += twice == once and not sum(resolved2.values())
            if once != tokens and args.verbose:
                bad.append(f"{os.path.relpath(path, args.midi_dir)}: {dict(resolved)}")
        print(
            f"{name} ({args.reader}): identical {same}/{n}; overlaps resolved in {with_overlaps} files "
            f"({resolved_total['same_onset']} same-onset notes dropped, {resolved_total['shortened']} notes "
            f"shortened); explained by them {expl}/{n}; second round trip identical {stable}/{n}"
            + (f"; not encoded: {dict(errors)}" if errors else "")
        )
        for line in bad:
            print("   ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
