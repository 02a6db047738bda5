"""Write the scores bundled with music21 as MIDI files: the project's built-in demo corpus.

Why this corpus:
- It is real music written by people (Bach's four-part chorales, Palestrina masses, Monteverdi madrigals, Haydn,
  Mozart and Beethoven string quartets, thousands of folk tunes), not synthetic notes.
- It ships inside the `music21` package (the optional extra `corpus`, `pip install -e ".[corpus]"`), so `make demo`
  needs no download, no account and no network, and every clone gets the same files.
- Licence: music21 itself is BSD-3-clause. Its corpus files are "licensed to us (or in a free license)" as the
  music21 corpus documentation puts it; they may be redistributed with music21. Some collections (the Essen folk
  songs, only in `--subset all`) are for non-commercial use. We write derived MIDI files on the user's machine and
  commit none of them.
- Caveats: MIDI written from notation has even timing, a single velocity, one tempo and no drums, so it exercises
  the pitch/onset/duration part of the tokenizer much more than velocity or tempo.

Subsets (`--subset`):
- `bach` (the default of `make demo`): the Bach chorales, ~410 short four-part pieces. music21 writes one in about
  0.3 s, so the subset takes roughly a minute on 2 cores.
- `polyphonic`: every multi-part piece outside the folk-song collections (chorales, masses, madrigals, quartets, ...);
  pieces with a single part are skipped with the reason "single part".
- `all`: every score, with multi-tune files (ABC collections) split into one MIDI per tune.

Each source file is one unit of work. Files that music21 fails to parse or to write are skipped and counted by
reason, never silently. Roman-numeral analyses (`.rntxt`) are not music and are left out; when a piece exists in
several encodings (e.g. `bwv277.krn` and `bwv277.mxl`) only one is kept, so that a split cannot put the same piece in
both train and test.
"""
from __future__ import annotations

import multiprocessing
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

SUBSETS = ("bach", "polyphonic", "all")
# When a piece exists in several encodings, keep the first of this order (MusicXML is the most complete).
FORMAT_PREFERENCE = (".mxl", ".musicxml", ".xml", ".krn", ".abc")
# Collections of one-line folk tunes: not part of the `polyphonic` subset.
FOLK_COLLECTIONS = ("airdsAirs", "essenFolksong", "miscFolk", "nottingham-dataset", "oneills1850", "ryansMammoth")


@dataclass
class CorpusResult:
    """What `write_music21_corpus` did: counts of source files and MIDI files, and skips by reason."""

    sources: int = 0
    written: int = 0  # MIDI files written in this run
    existing: int = 0  # MIDI files already present (kept, not rewritten)
    duplicates: int = 0  # alternative encodings of a piece that is already listed
    skipped: Counter = field(default_factory=Counter)  # reason -> number of source files or tunes

    def summary(self) -> str:
        text = f"{self.written} MIDI files written, {self.existing} already there, from {self.sources} source files"
        if self.duplicates:
            text += f" ({self.duplicates} duplicate encodings left out)"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        return text


def _corpus_root(path: Path) -> Path:
    """The music21 `corpus` folder that contains `path`."""
    for parent in path.parents:
        if parent.name == "corpus":
            return parent
    raise ValueError(f"{path} is not inside music21's corpus folder")


def list_pieces(subset: str = "bach") -> tuple[list[tuple[Path, Path]], int]:
    """Source files of a subset as sorted (absolute source path, relative MIDI path) pairs, and the number of
    duplicate encodings that were left out."""
    if subset not in SUBSETS:
        raise ValueError(f"--subset must be one of {', '.join(SUBSETS)}; got {subset!r}")
    try:
        from music21 import corpus
    except ImportError as err:
        raise ImportError(
            "the music21 corpus needs the `music21` package: install it with `pip install -e \".[corpus]\"` "
            "(or `make install`)"
        ) from err
    if subset == "bach":
        paths = corpus.getComposer("bach")
    else:
        paths = corpus.getPaths(name=("core",))
    chosen: dict[Path, Path] = {}  # relative path without suffix -> source path
    duplicates = 0
    for path in sorted(Path(p) for p in paths):
        if path.suffix.lower() not in FORMAT_PREFERENCE:
            continue  # .rntxt analyses and anything music21 lists that is not a score
        rel = path.relative_to(_corpus_root(path))
        if subset == "polyphonic" and rel.parts[0] in FOLK_COLLECTIONS:
            continue
        key = rel.with_suffix("")
        if key in chosen:
            duplicates += 1
            if FORMAT_PREFERENCE.index(path.suffix.lower()) >= FORMAT_PREFERENCE.index(chosen[key].suffix.lower()):
                continue
        chosen[key] = path
    pieces = [(chosen[key], key.with_name(key.name + ".mid")) for key in sorted(chosen)]
    return pieces, duplicates


def _export_piece(job: tuple[Path, Path, bool, bool]) -> tuple[int, int, Counter]:
    """Parse one source file and write its MIDI file(s). Returns (written, existing, skipped reasons)."""
    source, out_path, subset_is_polyphonic, overwrite = job
    skipped: Counter = Counter()
    if out_path.exists() and out_path.stat().st_size > 0 and not overwrite:
        return 0, 1, skipped
    from music21 import converter, stream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # music21 warns about every odd notation detail; the result is what counts
        try:
            parsed = converter.parse(source)
        except Exception as err:  # music21 raises many unrelated types on malformed scores
            skipped[f"music21 could not parse ({type(err).__name__})"] += 1
            return 0, 0, skipped
        scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
        written = 0
        for i, score in enumerate(scores):
            target = out_path if len(scores) == 1 else out_path.with_name(f"{out_path.stem}-{i + 1}.mid")
            if subset_is_polyphonic and len(score.parts) < 2:
                skipped["single part"] += 1
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                score.write("midi", fp=str(target))
            except Exception as err:  # e.g. tuplets or grace notes music21 cannot render to MIDI
                skipped[f"music21 could not write MIDI ({type(err).__name__})"] += 1
                target.unlink(missing_ok=True)
                continue
            written += 1
    return written, 0, skipped


def write_music21_corpus(
    out_dir: str | Path,
    subset: str = "bach",
    limit: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> CorpusResult:
    """Write the music21 scores of `subset` as MIDI under `out_dir` (same relative paths, `.mid`).

    `limit` keeps the first N source files in sorted order, so a limited corpus is the same on every machine.
    Existing non-empty MIDI files are kept unless `overwrite`, so re-running `make demo` is cheap.
    """
    out_dir = Path(out_dir)
    pieces, duplicates = list_pieces(subset)
    if limit is not None:
        pieces = pieces[:limit]
    result = CorpusResult(sources=len(pieces), duplicates=duplicates)
    jobs = [(src, out_dir / rel, subset == "polyphonic", overwrite) for src, rel in pieces]
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc=f"corpus music21/{subset} -> {out_dir}", unit="file", disable=None)
    with bar:
        if workers <= 1 or len(jobs) <= 1:
            outcomes = map(_export_piece, jobs)
            pool = None
        else:
            pool = multiprocessing.Pool(workers)
            outcomes = pool.imap_unordered(_export_piece, jobs, chunksize=1)  # pieces differ a lot in length
        try:
            for written, existing, skipped in outcomes:
                result.written += written
                result.existing += existing
                result.skipped.update(skipped)
                bar.update(1)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return result
