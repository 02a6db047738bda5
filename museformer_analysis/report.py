"""A generation run -> one report folder: DIR/index.html plus its pictures, audio and copies of the pieces.

    museformer-analyze report samples/ --reference train_stats.json --ppl ppl.json --out report/

Per piece: the piano roll, the bar x bar similarity heatmap, the audio (FluidSynth, Ogg Vorbis or FLAC), and its
bars, notes, instruments, tempo, time signature and grammar errors. For the set: L_t against the reference
corpus, SE, the metrics side by side with the reference's, and the perplexity table of `museformer-eval-ppl`.
Everything the page uses sits in DIR and is linked by a relative path, so the folder can be moved, zipped or
opened from file:// without a network. The markup is written by `report_html.py`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.constants import DEFAULT_POSITIONS_PER_BEAT
from data_prep.grammar import count_errors

from .audio import AudioToolMissing, find_fluidsynth, find_soundfont, render_midi, render_tokens
from .corpus import corpus_stats, stats_of
from .piece import Piece, is_token_file, read_token_file, token_config
from .plots import instrument_label, plot_curves, plot_heatmap, plot_pianoroll
from .similarity import DEFAULT_MAX_DISTANCE, similarity_error

# --audio-format -> (file suffix, MIME type of the <audio> element). Both are royalty-free, so every current
# browser build plays them (Chromium without its proprietary codecs too); Ogg Vorbis is about 5x smaller than
# FLAC for the same music (45 s of a 6-track song: 0.7 MB against 3.8 MB), FLAC is lossless.
AUDIO_FORMATS = {"ogg": (".ogg", "audio/ogg"), "flac": (".flac", "audio/flac")}
DEFAULT_AUDIO_FORMAT = "ogg"
PIECES_DIR = "pieces"  # DIR/pieces/NAME.{mid,png,heatmap.png,ogg}
PPL_KEYS = ("ppl", "loss", "tokens", "songs")  # what every length of a museformer-eval-ppl JSON holds


class NothingToReport(RuntimeError):
    """No input file could be analysed (exit status 1, as `stats` with nothing to analyse)."""


@dataclass
class PieceReport:
    """One piece as the page shows it; every path is relative to the report folder."""

    name: str  # the input file's name
    source: str  # copy of the input file
    pianoroll: str
    heatmap: str
    bars: int
    notes: int
    instruments: list[str]
    tempo: str  # e.g. "120 BPM" or "96-120 BPM (3 changes)"
    time_signature: str  # e.g. "4/4" or "4/4, 3/4 from bar 9"
    grammar_errors: int | None  # None: no token file to count them in
    grammar_source: str  # the token file counted, or why there is none
    audio: str | None = None
    audio_problem: str | None = None  # why there is no audio (what to install, or FluidSynth's error)


@dataclass
class SetReport:
    """The set of pieces against the reference corpus."""

    generated: dict  # the stats dict of corpus.py
    reference: dict | None
    reference_name: str | None
    similarity_plot: str
    se: float | None
    se_distances: list[int]
    se_problem: str | None
    perplexity: dict[int, dict] | None
    perplexity_source: str | None
    pieces: list[PieceReport] = field(default_factory=list)
    audio_mime: str = AUDIO_FORMATS[DEFAULT_AUDIO_FORMAT][1]


def write_report(
    inputs: list[str],
    out_dir: str | os.PathLike,
    reference: str | None = None,
    ppl_json: str | None = None,
    soundfont: str | None = None,
    audio_format: str = DEFAULT_AUDIO_FORMAT,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    positions_per_beat: int = DEFAULT_POSITIONS_PER_BEAT,
    remove_empty_bars: bool = True,
    title: str | None = None,
    reference_label: str | None = None,
) -> Path:
    """Write out_dir/index.html and its assets for the MIDI / token files under `inputs`; returns the page's path.

    reference: a folder or file(s) of the reference corpus, or a `museformer-analyze stats --json` output, called
    `reference_label` on the page (default: its folder or file name).
    ppl_json: what `museformer-eval-ppl --json` wrote. Without FluidSynth or a GM SoundFont the page says how to
    install them where the players would be; an explicit `soundfont` that does not exist is an error. Raises
    FileNotFoundError / ValueError for bad input and NothingToReport when no file could be analysed.
    """
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"--audio-format must be one of {', '.join(AUDIO_FORMATS)}; got {audio_format!r}.")
    if soundfont is not None:
        find_soundfont(soundfont)  # a SoundFont the user named must exist: AudioToolMissing, before any work
    perplexity = load_ppl_json(ppl_json) if ppl_json is not None else None
    out = Path(out_dir)
    for folder in (Path(p) for p in inputs if Path(p).is_dir()):
        if out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents:
            raise ValueError(f"--out {out_dir} is inside the input folder {folder}, so the report's copies of the "
                             "pieces would be read as pieces by the next report; write it elsewhere "
                             f"(e.g. {folder.resolve().name}_report beside it).")
    (out / PIECES_DIR).mkdir(parents=True, exist_ok=True)
    settings = {"max_distance": max_distance, "per_instrument": False, "positions_per_beat": positions_per_beat,
                "remove_empty_bars": remove_empty_bars}
    ref_stats = stats_of(reference, desc="report reference", **settings) if reference is not None else None

    audio_problem = _audio_tools_problem(soundfont)
    suffix, mime = AUDIO_FORMATS[audio_format]
    pieces: list[PieceReport] = []
    taken: set[str] = set()

    def add_piece(path: str, piece: Piece) -> None:
        stem = _unique_stem(path, taken)
        entry = _draw_piece(path, piece, out, stem, positions_per_beat)
        if audio_problem is None:
            _add_audio(entry, path, out / PIECES_DIR / f"{stem}{suffix}", soundfont, positions_per_beat)
        else:
            entry.audio_problem = audio_problem
        pieces.append(entry)

    gen_stats = corpus_stats(inputs, desc=f"report -> {out}"[:60], on_piece=add_piece, **settings)
    if not pieces:
        raise NothingToReport(f"no file under {', '.join(inputs)} could be analysed (skipped: "
                              f"{gen_stats['skipped']}), so there is no report.")

    report = SetReport(generated=gen_stats, reference=ref_stats,
                       reference_name=(reference_label or os.path.basename(os.path.normpath(reference))
                                       if reference else None),
                       similarity_plot="similarity.png", se=None, se_distances=[], se_problem=None,
                       perplexity=perplexity, perplexity_source=os.path.basename(ppl_json) if ppl_json else None,
                       pieces=pieces, audio_mime=mime)
    curves = [(f"generated ({plural(gen_stats['files'], 'piece')})", gen_stats["similarity"])]
    if ref_stats is not None:
        curves.insert(0, (f"reference: {report.reference_name} ({plural(ref_stats['files'], 'file')})",
                          ref_stats["similarity"]))
        try:
            report.se, report.se_distances = similarity_error(ref_stats["similarity"], gen_stats["similarity"],
                                                              max_distance)
        except ValueError as err:  # e.g. one-bar pieces: the page says why there is no SE
            report.se_problem = str(err)
    else:
        report.se_problem = "no reference corpus was given (--reference), so there is no SE."
    # the x axis ends at the farthest distance any curve has (8-bar samples leave t > 7 empty)
    farthest = max((int(t) for _, curve in curves for t, v in curve.items() if v is not None), default=1)
    plot_curves(curves, out / report.similarity_plot, min(max_distance, max(farthest, 1)))

    from .report_html import render_page  # here: report_html imports this module's dataclasses

    page = out / "index.html"
    page.write_text(render_page(report, title or f"Generation report: {', '.join(inputs)}"), encoding="utf-8")
    return page


def plural(count: int, noun: str) -> str:
    """1 piece, 2 pieces."""
    return f"{count:,} {noun}{'s' * (count != 1)}"


def load_ppl_json(path: str) -> dict[int, dict]:
    """{length: {"ppl", "loss", "tokens", "songs", ...}} from a `museformer-eval-ppl --json` file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--ppl {path}: no such file; write it with `museformer-eval-ppl ... --json`.") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--ppl {path}: not a JSON file ({e}); give what `museformer-eval-ppl --json` wrote.") from e
    if not isinstance(data, dict) or not data or not all(
        k.isdigit() and isinstance(v, dict) and all(key in v for key in PPL_KEYS) for k, v in data.items()
    ):
        raise ValueError(f"--ppl {path}: not written by `museformer-eval-ppl --json` (expected {{\"LENGTH\": "
                         f"{{{', '.join(PPL_KEYS)}, ...}}, ...}}).")
    return {int(k): v for k, v in sorted(data.items(), key=lambda kv: int(kv[0]))}


def _audio_tools_problem(soundfont: str | None) -> str | None:
    """None when FluidSynth and a SoundFont are there, else the message that says what to install."""
    try:
        find_soundfont(soundfont)
        find_fluidsynth()
    except AudioToolMissing as err:
        return str(err)
    return None


def _unique_stem(path: str, taken: set[str]) -> str:
    """A file-name-safe stem for the piece's assets, unique in the report (song.mid twice -> song, song_2)."""
    name = os.path.basename(path)
    name = name[: -len(".mid.txt")] if is_token_file(name) else os.path.splitext(name)[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "piece"
    candidate, k = stem, 1
    while candidate in taken:
        k += 1
        candidate = f"{stem}_{k}"
    taken.add(candidate)
    return candidate


def _draw_piece(path: str, piece: Piece, out: Path, stem: str, positions_per_beat: int) -> PieceReport:
    """Copy the piece into the report and draw its piano roll and heatmap."""
    rel = f"{PIECES_DIR}/{stem}"
    source = f"{rel}{'.mid.txt' if is_token_file(path) else os.path.splitext(path)[1].lower()}"
    shutil.copyfile(path, out / source)
    plot_pianoroll(piece, out / f"{rel}.png")
    plot_heatmap(piece, out / f"{rel}.heatmap.png")
    errors, grammar_source = grammar_errors_of(path, positions_per_beat)
    return PieceReport(
        name=os.path.basename(path), source=source, pianoroll=f"{rel}.png", heatmap=f"{rel}.heatmap.png",
        bars=piece.num_bars, notes=len(piece.notes), instruments=[instrument_label(i) for i in piece.instruments()],
        tempo=describe_tempo(piece), time_signature=describe_time_signature(piece),
        grammar_errors=errors, grammar_source=grammar_source,
    )


def _add_audio(entry: PieceReport, path: str, audio_path: Path, soundfont: str | None, positions_per_beat: int):
    try:
        if is_token_file(path):
            render_tokens(path, os.fspath(audio_path), soundfont, positions_per_beat)
        else:
            render_midi(path, os.fspath(audio_path), soundfont)
    except RuntimeError as err:  # FluidSynth failed on this piece: the page shows why, the others still play
        entry.audio_problem = str(err)
        return
    entry.audio = f"{PIECES_DIR}/{audio_path.name}"


def token_file_of(path: str) -> str | None:
    """The token file of a piece: the file itself, or the one beside its MIDI (x.txt from museformer-sample,
    x.mid.txt from museformer-prep encode)."""
    if is_token_file(path):
        return path
    base = os.path.splitext(path)[0]
    for candidate in (base + ".txt", path + ".txt"):
        if os.path.isfile(candidate):
            return candidate
    return None


def grammar_errors_of(path: str, positions_per_beat: int) -> tuple[int | None, str]:
    """(grammar errors of the piece's tokens, the token file counted) or (None, why they cannot be counted)."""
    tokens_path = token_file_of(path)
    if tokens_path is None:
        return None, "no token file x.txt or x.mid.txt beside the MIDI file x.mid"
    tokens = read_token_file(tokens_path)
    return count_errors(tokens, token_config(tokens, positions_per_beat)), os.path.basename(tokens_path)


def describe_tempo(piece: Piece) -> str:
    bpms = [bpm for _, bpm in piece.tempos_bpm]
    if not bpms:
        return "-"
    lo, hi = f"{round(min(bpms), 1):g}", f"{round(max(bpms), 1):g}"  # 0.1 BPM is finer than anyone hears
    if len(set(bpms)) == 1:
        return f"{lo} BPM"
    changes = len(bpms) - 1
    return f"{lo}-{hi} BPM ({changes} change{'s' * (changes > 1)})"


def describe_time_signature(piece: Piece) -> str:
    """"4/4", or "4/4, 3/4 from bar 9, ..." (1-based bars) when it changes."""
    parts, previous = [], None
    for bar_idx, (num, den) in enumerate(piece.bar_time_signatures):
        if (num, den) != previous:
            parts.append(f"{num}/{den}" if previous is None else f"{num}/{den} from bar {bar_idx + 1}")
            previous = (num, den)
    return ", ".join(parts) or "-"
