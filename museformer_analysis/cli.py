"""`museformer-analyze stats|se|plot|heatmap|pianoroll|render|report`: judge music by bar similarity, metrics,
pictures, audio, and one HTML page per generation run.

Exit codes: 0 = done; 1 = nothing could be analysed (every input file was skipped) or FluidSynth failed;
2 = bad arguments or input (missing file, bad option value, FluidSynth or SoundFont not installed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data_prep.constants import DEFAULT_POSITIONS_PER_BEAT

from .similarity import DEFAULT_MAX_DISTANCE

SE_FORMAT = "museformer-analyze se v1"
EXAMPLES = """\
examples:
  museformer-analyze stats demo_out/midi --json demo_out/analysis/train_stats.json
  museformer-analyze se demo_out/analysis/train_stats.json demo_out/samples --json demo_out/analysis/se.json
  museformer-analyze plot demo_out/midi demo_out/samples --label chorales --label samples --out lt.png
  museformer-analyze heatmap song.mid --out song_heatmap.png
  museformer-analyze pianoroll demo_out/samples/sample_000.mid
  museformer-analyze render demo_out/samples/sample_000.mid --out sample_000.ogg
  museformer-analyze report demo_out/samples --reference demo_out/analysis/train_stats.json \
      --ppl demo_out/ppl.json --out demo_out/report

exit codes: 0 = done, 1 = nothing could be analysed or FluidSynth failed, 2 = bad arguments or input"""


def _piece_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--positions-per-beat", type=int, default=DEFAULT_POSITIONS_PER_BEAT, metavar="P",
                   help="time grid steps per quarter note, as the tokenizer's (default: 12); also how token files "
                        "were written")
    p.add_argument("--remove-empty-bars", action=argparse.BooleanOptionalAction, default=True,
                   help="drop the empty bars before a piece's first note, as `museformer-prep --remove-empty-bars` "
                        "(default: on, so that bar distances count from the music, not from silent lead-in bars; "
                        "museformer-prep keeps them by default because the original's data does)")


def _similarity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, metavar="T",
                   help=f"largest bar distance t of L_t, in bars (default: {DEFAULT_MAX_DISTANCE}, as the paper)")
    p.add_argument("--per-instrument", action="store_true",
                   help="compare each instrument's bars on their own and pool those pairs (default: a bar's notes "
                        "of all instruments together)")
    _piece_options(p)


def _settings(args) -> dict:
    return {"max_distance": args.max_distance, "per_instrument": args.per_instrument,
            "positions_per_beat": args.positions_per_beat, "remove_empty_bars": args.remove_empty_bars}


def _write_json(data: dict, path: str | None) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if path is None:
        sys.stdout.write(text)
        return
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _describe(name: str, stats: dict) -> str:
    skipped = stats["skipped"]
    text = f"{name}: {stats['files']} files"
    if skipped:
        text += " (skipped: " + ", ".join(f"{reason}: {n}" for reason, n in skipped.items()) + ")"
    curve = stats["similarity"]
    head = "  ".join(f"L_{t}={_fmt(curve.get(str(t)))}" for t in (1, 2, 4, 8) if str(t) in curve)
    return f"{text}; {head}"


def _out_for(input_path: str, suffix: str) -> str:
    """x.mid / x.mid.txt -> x<suffix> in the same folder."""
    if input_path.lower().endswith(".mid.txt"):
        return input_path[: -len(".mid.txt")] + suffix
    return os.path.splitext(input_path)[0] + suffix


# ----------------------------------------------------------------------------------------------------- commands
def cmd_stats(args) -> int:
    from .corpus import corpus_stats

    stats = corpus_stats(args.inputs, desc=f"stats {' '.join(args.inputs)}"[:60], **_settings(args))
    _write_json(stats, args.json)
    log = sys.stderr if args.json is None else sys.stdout
    print(_describe("stats", stats), file=log)
    if args.json is not None:
        print(f"wrote {args.json}", file=log)
    return 0 if stats["files"] else 1


def cmd_se(args) -> int:
    from .corpus import stats_of
    from .similarity import similarity_error

    settings = _settings(args)
    ref = stats_of(args.reference, desc="se reference", **settings)
    gen = stats_of(args.generated, desc="se generated", **settings)
    for name, stats, path in (("REFERENCE", ref, args.reference), ("GENERATED", gen, args.generated)):
        if not stats["files"]:
            print(f"museformer-analyze se: no file of {name} {path} could be analysed "
                  f"(skipped: {stats['skipped']})", file=sys.stderr)
            return 1
    se, used = similarity_error(ref["similarity"], gen["similarity"], args.max_distance)
    result = {"format": SE_FORMAT, "se": se, "max_distance": args.max_distance, "distances": used,
              "reference": ref, "generated": gen}
    _write_json(result, args.json)
    log = sys.stderr if args.json is None else sys.stdout
    print(_describe("reference", ref), file=log)
    print(_describe("generated", gen), file=log)
    span = f"t = {used[0]}..{used[-1]}" if used == list(range(used[0], used[-1] + 1)) else f"t in {used}"
    print(f"SE = {se:.4f} (mean |L_t(ref) - L_t(gen)| over {span}, {len(used)} distances)", file=log)
    if args.json is not None:
        print(f"wrote {args.json}", file=log)
    return 0


def cmd_plot(args) -> int:
    from .corpus import stats_of
    from .plots import plot_curves

    if args.label and len(args.label) != len(args.inputs):
        raise ValueError(f"--label was given {len(args.label)} times for {len(args.inputs)} inputs; give one "
                         "--label per input, or none.")
    curves = []
    for k, path in enumerate(args.inputs):
        stats = stats_of(path, desc=f"plot {path}"[:60], **_settings(args))
        label = args.label[k] if args.label else os.path.basename(os.path.normpath(path))
        curves.append((f"{label} ({stats['files']} files)", stats["similarity"]))
        print(_describe(label, stats))
    print(f"wrote {plot_curves(curves, args.out, args.max_distance, args.title)}")
    return 0


def _load_one(args):
    from .piece import load_piece

    return load_piece(args.file, args.positions_per_beat, args.remove_empty_bars)


def cmd_heatmap(args) -> int:
    from .plots import plot_heatmap

    print(f"wrote {plot_heatmap(_load_one(args), args.out or _out_for(args.file, '.heatmap.png'))}")
    return 0


def cmd_pianoroll(args) -> int:
    from .plots import plot_pianoroll

    print(f"wrote {plot_pianoroll(_load_one(args), args.out or _out_for(args.file, '.png'))}")
    return 0


def cmd_render(args) -> int:
    from .audio import render_midi, render_tokens
    from .piece import is_token_file

    out_audio = args.out or args.out_wav or _out_for(args.file, ".wav")
    if is_token_file(args.file):
        out = render_tokens(args.file, out_audio, args.soundfont, args.positions_per_beat)
    else:
        out = render_midi(args.file, out_audio, args.soundfont)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    page = write_report(args.inputs, args.out, reference=args.reference, ppl_json=args.ppl, soundfont=args.soundfont,
                        audio_format=args.audio_format, max_distance=args.max_distance,
                        positions_per_beat=args.positions_per_beat, remove_empty_bars=args.remove_empty_bars,
                        title=args.title, reference_label=args.reference_label)
    print(f"wrote {page}")
    return 0


# ------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="museformer-analyze", formatter_class=fmt, epilog=EXAMPLES,
        description="Judge music by its structure: bar-similarity statistics L_t and the similarity error SE "
                    "(Museformer paper §3.1), pitch and groove metrics, piano rolls, heatmaps and audio. Bars are "
                    "cut as the tokenizer cuts them; inputs are MIDI files or token files (*.mid.txt).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stats", help="L_t for t = 1..T and other metrics of a corpus, as JSON", formatter_class=fmt,
                       description="L_t = the mean bar similarity l(i, i+t) over every bar pair of the corpus, for "
                                   "t = 1..T, plus pitch-class entropy, scale consistency, groove consistency, the "
                                   "empty-bar rate and notes per bar. Folders are searched recursively; unreadable "
                                   "files are counted by reason.",
                       epilog="example:\n  museformer-analyze stats data/midi more/song.mid --json stats.json")
    p.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="MIDI / token files, or folders of them")
    p.add_argument("--json", metavar="OUT.json", help="write the statistics here (default: print them)")
    _similarity_options(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("se", help="similarity error of generated music against a reference corpus",
                       formatter_class=fmt,
                       description="SE = mean over t of |L_t(REFERENCE) - L_t(GENERATED)|, over the distances "
                                   "t <= T that both corpora have. Each side is a folder, a file or a JSON written by "
                                   "`stats --json` (computed with the same flags).",
                       epilog="example:\n  museformer-analyze se data/train_midi samples/ --json se.json")
    p.add_argument("reference", metavar="REFERENCE")
    p.add_argument("generated", metavar="GENERATED")
    p.add_argument("--json", metavar="OUT.json", help="write SE and both corpora's statistics here (default: print)")
    _similarity_options(p)
    p.set_defaults(func=cmd_se)

    p = sub.add_parser("plot", help="L_t curves of several corpora on one chart (the paper's Fig. 1), PNG",
                       formatter_class=fmt,
                       description="One line per input (a folder, a file or a `stats --json` output).",
                       epilog="example:\n  museformer-analyze plot train/ samples/ --label train --label samples "
                              "--out lt.png")
    p.add_argument("inputs", nargs="+", metavar="DIR_OR_JSON")
    p.add_argument("--out", default="similarity.png", metavar="OUT.png", help="(default: similarity.png)")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="legend name of each input, in order (default: the folder or file name)")
    p.add_argument("--title", help="chart title (default: names the inputs)")
    _similarity_options(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("heatmap", help="bar x bar similarity matrix of one piece, PNG", formatter_class=fmt,
                       description="l(i, j) for every pair of bars of FILE, instruments pooled.",
                       epilog="example:\n  museformer-analyze heatmap song.mid --out song_heatmap.png")
    p.add_argument("file", metavar="FILE", help="a MIDI file or a token file (*.mid.txt)")
    p.add_argument("--out", metavar="OUT.png", help="(default: FILE's name with .heatmap.png, beside it)")
    _piece_options(p)
    p.set_defaults(func=cmd_heatmap)

    p = sub.add_parser("pianoroll", help="piano roll of one piece, instruments coloured, bar lines, PNG",
                       formatter_class=fmt,
                       description="Notes as the tokenizer quantises them; x in bars, y in MIDI pitch.",
                       epilog="example:\n  museformer-analyze pianoroll samples/sample_000.mid  "
                              "# -> samples/sample_000.png")
    p.add_argument("file", metavar="FILE", help="a MIDI file or a token file (*.mid.txt)")
    p.add_argument("--out", metavar="OUT.png", help="(default: FILE's name with .png, beside it)")
    _piece_options(p)
    p.set_defaults(func=cmd_pianoroll)

    p = sub.add_parser("render", help="MIDI -> WAV, FLAC or Ogg with FluidSynth and a General MIDI SoundFont",
                       formatter_class=fmt,
                       description="Needs the fluidsynth program and a GM SoundFont (Debian/Ubuntu: apt-get install "
                                   "fluidsynth fluid-soundfont-gm). A token file is decoded to MIDI first. The "
                                   "output's suffix picks the format: .wav, .flac (lossless) or .ogg (Vorbis).",
                       epilog="example:\n  museformer-analyze render samples/sample_000.mid --out sample_000.ogg")
    p.add_argument("file", metavar="FILE.mid", help="a MIDI file or a token file (*.mid.txt)")
    p.add_argument("out_wav", metavar="OUT.wav", nargs="?", default=None,
                   help="old form of --out (a second positional), kept for one release")
    p.add_argument("--out", metavar="OUT.wav|OUT.flac|OUT.ogg",
                   help="the audio file; its suffix picks the format (default: FILE's name with .wav, beside it)")
    p.add_argument("--soundfont", metavar="FILE.sf2", help="SoundFont to play with (default: the installed GM one)")
    p.add_argument("--positions-per-beat", type=int, default=DEFAULT_POSITIONS_PER_BEAT, metavar="P",
                   help="grid of a token file (default: 12)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("report", help="one HTML page for a generation run: pictures, audio, L_t, SE, metrics, "
                                      "perplexity", formatter_class=fmt,
                       description="Writes OUT/index.html and its assets (all linked by relative paths: the folder "
                                   "opens from file:// without a network). Per piece: piano roll, bar x bar "
                                   "heatmap, audio player (FluidSynth; without it the page says what to install), "
                                   "bars, notes, instruments, tempo, time signature, grammar errors (counted in the "
                                   "token file beside the MIDI). For the set: L_t against the reference corpus, SE, "
                                   "the metrics side by side with the reference's, and the perplexity table.",
                       epilog="example:\n  museformer-analyze report demo_out/samples --reference "
                              "demo_out/analysis/train_stats.json \\\n      --ppl demo_out/ppl.json --out "
                              "demo_out/report")
    p.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="the generated MIDI / token files, or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder; DIR/index.html is the page (required)")
    p.add_argument("--reference", metavar="CORPUS",
                   help="reference corpus: a folder of MIDI / token files or a `stats --json` output computed with "
                        "the same flags (default: none, so no SE and no reference columns)")
    p.add_argument("--reference-label", metavar="NAME",
                   help="what the page calls the reference (default: its folder or file name)")
    p.add_argument("--ppl", metavar="ppl.json",
                   help="what `museformer-eval-ppl --json` wrote, shown as a table (default: no perplexity table)")
    p.add_argument("--audio-format", choices=("ogg", "flac"), default="ogg",
                   help="ogg: Vorbis, about 5x smaller; flac: lossless (default: ogg)")
    p.add_argument("--soundfont", metavar="FILE.sf2", help="SoundFont to play with (default: the installed GM one)")
    p.add_argument("--title", help="page title (default: names the inputs)")
    p.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, metavar="T",
                   help=f"largest bar distance t of L_t and SE, in bars (default: {DEFAULT_MAX_DISTANCE})")
    _piece_options(p)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "max_distance", 1) < 1:
        parser.error(f"--max-distance must be at least 1 bar; got {args.max_distance}")
    if getattr(args, "out_wav", None) and args.out and args.out_wav != args.out:
        parser.error(f"render: two outputs given ({args.out_wav} and --out {args.out}); pass --out only")
    if not 1 <= getattr(args, "positions_per_beat", 1) <= 480:
        parser.error(f"--positions-per-beat must be in 1..480 (the tokenizer's range); got {args.positions_per_beat}")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, ImportError) as err:  # AudioToolMissing is a FileNotFoundError
        print(f"museformer-analyze {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"museformer-analyze {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
