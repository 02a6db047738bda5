"""`museformer-prep`: MIDI -> tokens -> train/valid/test splits -> fairseq data-bin, plus decode, dict and corpus.

Exit codes: 0 = something was produced; 1 = nothing was produced (every input failed) or fairseq failed;
2 = bad arguments or input (missing folder, bad option value, fairseq not installed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from . import split as split_mod
from .constants import MIDI_SUFFIXES
from .encode import DEFAULT_FILE_TIMEOUT, DEFAULT_READER
from .midi_io import READERS
from .split import CONFIG_NAME, MANIFEST_NAME, SPLITS

TOKENIZER_FIELDS = ("encoding", "instruments", "positions_per_beat", "normalize_pitch", "pitch_weighting",
                    "remove_empty_bars", "ignore_ts")  # the TokenizerConfig fields that have a flag
EXAMPLES = """\
examples:
  museformer-prep corpus music21 demo_out/midi --subset bach
  museformer-prep all demo_out/midi data-bin/demo --workers 2
  museformer-prep all lmd6/midi data-bin/lmd6remi --encoding remigen2 --instruments lmd6 \\
      --normalize-pitch --remove-empty-bars --ignore-ts --lists data/meta
  museformer-prep encode midi/ tokens/ --encoding remigen --workers 4
  museformer-prep split tokens/ split/ --ratios 8,1,1 --seed 1
  museformer-prep binarize split/ data-bin/mine
  museformer-prep decode samples/ samples_midi/

encode and all resume: run the same command again on the same output folder and the files already encoded with
the same tokenizer settings are skipped (--overwrite encodes everything again).

exit codes: 0 = something was produced, 1 = nothing was produced, 2 = bad arguments or input,
            130 = interrupted (what was finished is kept; run the same command again to go on)"""


def default_workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not available on macOS
        return max(1, min(8, os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------- tokenizer config
def add_tokenizer_options(parser: argparse.ArgumentParser) -> None:
    """Tokenizer flags. Their defaults are None so that a config stored beside the input can fill the gaps."""
    g = parser.add_argument_group(
        "tokenizer options",
        "unset options come from the tokenizer.json/manifest.json beside the input, else from the defaults",
    )
    g.add_argument("--encoding", choices=("remigen2", "remigen"), default=None,
                   help="remigen2: tempo once per bar (the paper's LMD setting); remigen: tempo after every onset "
                        "(default: remigen2)")
    g.add_argument("--instruments", choices=("general", "lmd6"), default=None,
                   help="general: every GM program; lmd6: map programs to the paper's six tracks (default: general)")
    g.add_argument("--positions-per-beat", type=int, default=None, metavar="P",
                   help="time grid steps per quarter note (default: 12, as MidiProcessor)")
    g.add_argument("--normalize-pitch", action=argparse.BooleanOptionalAction, default=None,
                   help="transpose to C major / A minor (default: off)")
    g.add_argument("--pitch-weighting", choices=("count", "duration_velocity"), default=None,
                   help="key-detection histogram for --normalize-pitch (default: count, as the original)")
    g.add_argument("--remove-empty-bars", action=argparse.BooleanOptionalAction, default=None,
                   help="drop leading and trailing empty bars (default: off, as the original's data; "
                   "museformer-analyze drops them by default because it measures distances between bars of music)")
    g.add_argument("--ignore-ts", action=argparse.BooleanOptionalAction, default=None,
                   help="write no time-signature tokens; decoding assumes 4/4 (default: off)")


def stored_config(*folders: Path) -> dict | None:
    """The tokenizer config recorded in the first folder that has tokenizer.json or an encode manifest.json."""
    for folder in folders:
        if (folder / CONFIG_NAME).is_file():
            return json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        if (folder / MANIFEST_NAME).is_file():
            config = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("tokenizer")
            if config is not None:
                return config
    return None


def tokenizer_config(args: argparse.Namespace, stored: dict | None = None):
    """Explicit flags override the stored config, which overrides TokenizerConfig's defaults."""
    from .config import TokenizerConfig

    values = dict(stored or {})
    for f in dataclasses.fields(TokenizerConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    return TokenizerConfig.from_dict(values)


# ------------------------------------------------------------------------------------------------------- encode
def encode_config(args, out_dir: Path):
    """Tokenizer settings of an encode run: flags over the settings already used in ``out_dir`` (so that running
    the same command again resumes), over the defaults; with --overwrite the folder's settings are ignored."""
    from .encode_manifest import read_previous

    stored = None if args.overwrite else read_previous(out_dir)[0]
    return tokenizer_config(args, stored)


def encode(args, in_dir: Path, out_dir: Path):
    """``run_encode`` with the command's flags; prints the summary line and any unexpected errors."""
    from .encode import encode_summary, run_encode

    run = run_encode(in_dir, out_dir, encode_config(args, out_dir), args.workers, args.reader, args.file_timeout,
                     args.overwrite, args.retry_failed)
    print(encode_summary(run) + f"; manifest: {out_dir / MANIFEST_NAME}")
    for entry in run.manifest["files"]:
        if entry["status"] == "failed" and entry["reason"].startswith("unexpected_"):
            print(f"  {entry['path']}: {entry['detail']}", file=sys.stderr)
    return run


def cmd_encode(args) -> int:
    return 0 if encode(args, Path(args.in_dir), Path(args.out_dir)).manifest["encoded"] else 1


# ------------------------------------------------------------------------------------------------------- decode
def midi_output_name(token_file: str) -> str:
    """`x.mid.txt` -> `x.mid`; `x.txt` -> `x.mid`; `x` -> `x.mid`."""
    name = token_file[:-4] if token_file.lower().endswith(".txt") else token_file
    return name if Path(name).suffix.lower() in MIDI_SUFFIXES else name + ".mid"


def cmd_decode(args) -> int:
    from .tokens_to_midi import decode_tokens

    source, out_dir = Path(args.tokens), Path(args.out_dir)
    if source.is_dir():
        files = [(source / rel, rel) for rel in split_mod.find_token_files(source)]
        cfg = tokenizer_config(args, stored_config(source, source.parent))
    elif source.is_file():
        files = [(source, source.name)]
        cfg = tokenizer_config(args, stored_config(source.parent))
    else:
        raise FileNotFoundError(f"{source} is neither a token file nor a folder")
    if not files:
        raise FileNotFoundError(f"no token files (*.txt) under {source}")
    written, notes, failed, skipped, resolved = 0, 0, Counter(), Counter(), Counter()
    for path, rel in tqdm(files, desc=f"decode -> {out_dir}", unit="file", disable=None):
        songs = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not songs:
            failed["empty token file"] += 1
            continue
        target = out_dir / midi_output_name(rel)
        for i, tokens in enumerate(songs):
            # a file with several lines (e.g. a split file) holds one song per line: one MIDI each
            out_path = target if len(songs) == 1 else target.with_name(f"{Path(target.stem).stem}-{i + 1}.mid")
            try:
                result = decode_tokens(tokens, cfg)
            except ValueError as err:
                failed[f"{type(err).__name__}: {err}"[:80]] += 1
                continue
            out_path.parent.mkdir(parents=True, exist_ok=True)
            result.midi.dump(str(out_path))
            written += 1
            notes += result.num_notes
            skipped.update(result.skipped)
            resolved.update(result.resolved)
    text = f"{written} MIDI files written to {out_dir}, {notes} notes"
    if failed:
        text += "; failed: " + ", ".join(f"{r}: {n}" for r, n in failed.most_common())
    if skipped:
        text += "; malformed tokens skipped: " + ", ".join(f"{r}: {n}" for r, n in skipped.most_common())
    if resolved:
        text += (f"; same-pitch overlaps resolved: {resolved['same_onset']} notes dropped (another note of their "
                 f"pitch starts at the same onset), {resolved['shortened']} notes shortened (to end where the next "
                 "note of their pitch starts)")
    print(text)
    return 0 if written else 1


# -------------------------------------------------------------------------------------------- split / binarize
def encoded_token_files(token_dir: Path) -> list[str]:
    """The token files of a folder: those its encode manifest lists as encoded (so stale files from earlier runs
    are not picked up), or every *.txt when there is no manifest."""
    manifest = token_dir / MANIFEST_NAME
    if manifest.is_file():
        entries = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
        return sorted(e["output"] for e in entries if e.get("status") == "encoded")
    return split_mod.find_token_files(token_dir)


def run_split(token_dir: Path, out_dir: Path, lists: str | None, ratios: str, seed: int):
    if lists:
        assignment = split_mod.read_lists(lists)
    else:
        names = encoded_token_files(token_dir)
        if not names:
            raise FileNotFoundError(f"no token files (*.txt) under {token_dir}; write them with `museformer-prep encode`")
        assignment = split_mod.random_split(names, split_mod.parse_ratios(ratios), seed)
    result = split_mod.write_split(token_dir, out_dir, assignment)
    print(f"split: {result.summary()} -> {out_dir}")
    if result.missing:
        shown = ", ".join(result.missing[:5]) + (" ..." if len(result.missing) > 5 else "")
        print(f"warning: {len(result.missing)} listed files have no token file in {token_dir}: {shown}", file=sys.stderr)
    for split in SPLITS:
        if result.songs[split] == 0:
            print(f"warning: the {split} split is empty", file=sys.stderr)
    return result


def cmd_split(args) -> int:
    result = run_split(Path(args.token_dir), Path(args.out_dir), args.lists, args.ratios, args.seed)
    return 0 if sum(result.songs.values()) else 1


def run_binarize(args, split_dir: Path, dest_dir: Path, cfg=None) -> int:
    from .binarize import binarize

    stored = stored_config(split_dir)
    flags_given = any(getattr(args, f, None) is not None for f in TOKENIZER_FIELDS)
    if cfg is None and (args.dict is None or stored is not None or flags_given):
        cfg = tokenizer_config(args, stored)  # with --dict too, so that tokenizer.json records the config
    print(f"binarise {split_dir} -> {dest_dir} with fairseq-preprocess ({args.workers} workers)")
    result = binarize(split_dir, dest_dir, cfg=cfg, dict_path=args.dict, workers=args.workers,
                      allow_unk=args.allow_unk)
    print(result.summary())
    return 0 if result.songs else 1


def cmd_binarize(args) -> int:
    return run_binarize(args, Path(args.split_dir), Path(args.data_bin))


def cmd_dict(args) -> int:
    from .vocab import write_dict

    cfg = tokenizer_config(args)
    Path(args.out_path).parent.mkdir(parents=True, exist_ok=True)
    symbols = write_dict(args.out_path, cfg)
    print(f"wrote {args.out_path}: {len(symbols)} symbols (+4 fairseq specials) for {cfg.to_json()}")
    return 0


def cmd_all(args) -> int:
    data_bin = Path(args.data_bin)
    token_dir, split_dir = data_bin / "tokens", data_bin / "split"
    run = encode(args, Path(args.midi_dir), token_dir)
    if not run.manifest["encoded"]:
        return 1
    cfg = tokenizer_config(args, run.manifest["tokenizer"])
    result = run_split(token_dir, split_dir, args.lists, args.ratios, args.seed)
    if not sum(result.songs.values()):
        return 1
    return run_binarize(args, split_dir, data_bin, cfg=cfg)


def cmd_corpus(args) -> int:
    from .corpus import write_music21_corpus

    result = write_music21_corpus(args.out_dir, args.subset, args.limit, args.workers, args.overwrite)
    print(f"corpus music21/{args.subset}: {result.summary()} -> {args.out_dir}")
    return 0 if result.written + result.existing else 1


# ------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="museformer-prep",
        description="Prepare MIDI for Museformer: encode to REMIGEN2/REMIGEN tokens, split, and binarise with "
                    "fairseq-preprocess into a data dir for `fairseq-train --task museformer_lm`.",
        epilog=EXAMPLES, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def workers(p):
        p.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                       help="worker processes (default: the CPU count, at most 8)")

    def encode_opts(p):
        p.add_argument("--reader", choices=READERS, default=DEFAULT_READER,
                       help="MIDI reader: symusic parses in C++ and gives the same tokens as miditoolkit, the "
                            f"reference, about 4x faster (default: {DEFAULT_READER})")
        p.add_argument("--file-timeout", type=float, default=DEFAULT_FILE_TIMEOUT, metavar="SECONDS",
                       help="give up on a file after this long (its worker is replaced, the manifest says 'timeout'; "
                            f"0 = no limit) (default: {DEFAULT_FILE_TIMEOUT:g})")
        p.add_argument("--overwrite", action="store_true",
                       help="encode every file again, with the given settings; without it a second run on the same "
                            "output folder skips the files already encoded with the same tokenizer settings "
                            "(default: off)")
        p.add_argument("--retry-failed", action="store_true",
                       help="when resuming, also try again the files that failed in an earlier run (default: off)")

    def split_opts(p):
        p.add_argument("--lists", metavar="DIR", help="folder with train.txt, valid.txt, test.txt: one MIDI path per "
                       "line, relative to the MIDI folder (as the original's data/meta/*.txt) (default: a random split by --ratios)")
        p.add_argument("--ratios", default="8,1,1", help="train,valid,test weights of the random split (default: 8,1,1)")
        p.add_argument("--seed", type=int, default=1, help="seed of the random split (default: 1)")

    def binarize_opts(p):
        p.add_argument("--dict", metavar="PATH", help="use this dict.txt instead of the tokenizer config's vocabulary "
                       "(default: the config's complete vocabulary)")
        p.add_argument("--allow-unk", action="store_true", help="map tokens missing from the dict to <unk> "
                       "instead of failing (default: fail)")

    p = sub.add_parser("encode", help="MIDI files -> one token file each (+ manifest.json)", formatter_class=fmt,
                       description="Encode every *.mid/*.midi under IN_DIR to OUT_DIR/<same path>.txt (one line of "
                                   "tokens) and write OUT_DIR/manifest.json. Bad files are counted and skipped.",
                       epilog="example:\n  museformer-prep encode midi/ tokens/ --instruments lmd6 --ignore-ts")
    p.add_argument("in_dir", metavar="IN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    add_tokenizer_options(p), encode_opts(p), workers(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="token files -> MIDI", formatter_class=fmt,
                       description="Decode a token file, or every *.txt under a folder, to MIDI (x.mid.txt -> "
                                   "x.mid). Malformed tokens are skipped and counted.",
                       epilog="example:\n  museformer-prep decode data-bin/demo/tokens decoded/")
    p.add_argument("tokens", metavar="TOKENS_FILE_OR_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    add_tokenizer_options(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("split", help="token files -> train/valid/test.txt", formatter_class=fmt,
                       description="Write OUT_DIR/{train,valid,test}.txt (one song per line) from file lists or a "
                                   "seeded random split, and OUT_DIR/lists/ (which file went where).",
                       epilog="example:\n  museformer-prep split tokens/ split/ --lists data/meta")
    p.add_argument("token_dir", metavar="TOKEN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    split_opts(p)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("binarize", help="train/valid/test.txt -> fairseq data-bin", formatter_class=fmt,
                       description="Run fairseq-preprocess --only-source on SPLIT_DIR/{train,valid,test}.txt with the "
                                   "tokenizer's complete dict.txt; also writes DATA_BIN_DIR/tokenizer.json.",
                       epilog="example:\n  museformer-prep binarize split/ data-bin/mine --workers 2")
    p.add_argument("split_dir", metavar="SPLIT_DIR")
    p.add_argument("data_bin", metavar="DATA_BIN_DIR")
    add_tokenizer_options(p), binarize_opts(p), workers(p)
    p.set_defaults(func=cmd_binarize)

    p = sub.add_parser("dict", help="write the fairseq dict.txt of a tokenizer config", formatter_class=fmt,
                       description="Write every token the tokenizer can emit, in a fixed order, as a fairseq dict.",
                       epilog="example:\n  museformer-prep dict dict.txt --instruments lmd6 --ignore-ts")
    p.add_argument("out_path", metavar="OUT_PATH")
    add_tokenizer_options(p)
    p.set_defaults(func=cmd_dict)

    p = sub.add_parser("all", help="encode -> split -> binarize in one go", formatter_class=fmt,
                       description="Encode MIDI_DIR into DATA_BIN_DIR/tokens/, split into DATA_BIN_DIR/split/, and "
                                   "binarise into DATA_BIN_DIR.",
                       epilog="example:\n  museformer-prep all demo_out/midi data-bin/demo --workers 2")
    p.add_argument("midi_dir", metavar="MIDI_DIR")
    p.add_argument("data_bin", metavar="DATA_BIN_DIR")
    add_tokenizer_options(p), encode_opts(p), split_opts(p), binarize_opts(p), workers(p)
    p.set_defaults(func=cmd_all)

    p = sub.add_parser("corpus", help="write the built-in demo corpus (music21's scores) as MIDI",
                       formatter_class=fmt,
                       description="Write real music bundled with music21 as MIDI files (needs the `corpus` extra). "
                                   "Existing files are kept; pieces music21 fails on are counted and skipped.",
                       epilog="example:\n  museformer-prep corpus music21 demo_out/midi --subset bach --workers 2")
    p.add_argument("source", choices=("music21",), metavar="SOURCE", help="music21 (the only source so far)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--subset", choices=("bach", "polyphonic", "all"), default="bach",
                   help="bach: ~410 chorales (default, about a minute on 2 cores); polyphonic: ~1,900 multi-part "
                        "pieces; all: also ~13,000 folk tunes")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N source files (sorted) (default: all)")
    p.add_argument("--overwrite", action="store_true", help="rewrite MIDI files that already exist (default: keep them)")
    workers(p)
    p.set_defaults(func=cmd_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .binarize import FairseqMissingError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        parser.error(f"--workers must be at least 1; got {args.workers}")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, ImportError, FairseqMissingError) as err:
        print(f"museformer-prep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"museformer-prep {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"museformer-prep {args.command}: interrupted; the finished files are kept: run the same command "
              "again to go on from there", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
