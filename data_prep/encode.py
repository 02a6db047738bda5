"""The encode pipeline: a folder of MIDI files → one token file each + the manifest, resumable and time-bounded.

    run_encode(Path("lmd_full"), Path("tokens"), cfg, workers=2)

- **Resume.** A second run on the same output folder skips the inputs already done with the same tokenizer
  settings (an input whose size or modification time changed is done again); ``overwrite`` redoes everything.
  Other settings on a folder that already holds tokens are refused (``EncodeSettingsError``), never mixed.
- **Nothing half-written.** A worker writes each token file to a temporary name and renames it; the main process
  journals every result as it arrives (``encode_manifest.py``), so a kill loses at most the files in flight, and
  the resumed run's token files and manifest equal those of an uninterrupted run, byte for byte.
- **Time-bounded.** Every file gets at most ``file_timeout`` seconds in its worker; a file over it is recorded
  with the reason ``timeout``, its worker is replaced and the run goes on (``timeout_pool.py``).
- **Flat memory.** Results are streamed to the journal, not held; the manifest is folded from it at the end.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from . import encode_manifest
from .constants import MIDI_SUFFIXES
from .midi_io import READERS
from .split import TOKEN_SUFFIX
from .timeout_pool import CRASHED, TIMEOUT, imap_bounded

DEFAULT_READER = "symusic"  # same tokens as miditoolkit (tests/test_golden.py, benchmarks/compare_readers.py), ~4x faster
DEFAULT_FILE_TIMEOUT = 60.0  # seconds; a normal song takes well under one (a 10,000-token Lakh song: ~0.1 s)


class EncodeSettingsError(ValueError):
    """The output folder already holds tokens encoded with other tokenizer settings; the message is one line."""


@dataclass
class EncodeRun:
    """What one ``run_encode`` call did, beside the manifest it wrote."""

    manifest: dict
    skipped_encoded: int  # inputs found done by an earlier run and kept
    skipped_failed: int  # inputs that failed in an earlier run, not tried again (``retry_failed``)
    processed: int  # inputs encoded (or failed) by this run
    seconds: float

    @property
    def files_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def find_midi_files(in_dir: Path) -> List[str]:
    """Relative POSIX paths of every *.mid / *.midi (any case) under ``in_dir``, sorted."""
    if not in_dir.is_dir():
        raise FileNotFoundError(f"MIDI folder {in_dir} does not exist")
    found = (p for p in in_dir.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    return sorted(p.relative_to(in_dir).as_posix() for p in found)


# ----------------------------------------------------------------------------------------------------- workers
_WORKER_STATE: dict = {}


def _init_worker(in_dir: Path, out_dir: Path, cfg, reader: str) -> None:
    """Set up a worker (a replaced one too): its settings, and the encoder imported now, so that the first file's
    time limit measures encoding, not imports."""
    from . import midi_to_tokens  # noqa: F401

    if reader == "symusic":
        import symusic  # noqa: F401
    _WORKER_STATE.update(in_dir=in_dir, out_dir=out_dir, cfg=cfg, reader=reader)


def _input_stamp(path: Path) -> dict:
    """Size and modification time of an input: an input whose stamp changed is encoded again on resume."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _entry(rel: str, in_dir: Path, reader: str) -> dict:
    """The manifest fields every entry has: input, output, input stamp (None when it cannot be read), reader."""
    try:
        stamp = _input_stamp(in_dir / rel)
    except OSError:
        stamp = {"size": None, "mtime_ns": None}
    return {"path": rel, "output": rel + TOKEN_SUFFIX, **stamp, "reader": reader}


def _failed(entry: dict, out_dir: Path, reason: str, detail: str) -> dict:
    """``entry`` as a failure; the input's token file from an earlier run is removed, so no stale file is left
    next to a failure."""
    (out_dir / entry["output"]).unlink(missing_ok=True)
    return {**entry, "status": "failed", "tokens": 0, "reason": reason, "detail": detail}


def _unexpected(err: BaseException) -> Tuple[str, str]:
    """(reason, detail) of an exception that is not a MidiEncodeError: a bug, counted and shown, never fatal."""
    return f"unexpected_{type(err).__name__}", f"{type(err).__name__}: {err}"


def _encode_one(rel: str) -> dict:
    """Encode one MIDI file and write its token file (temporary name + rename). Returns its manifest entry."""
    from .errors import MidiEncodeError
    from .midi_to_tokens import encode_midi

    state = _WORKER_STATE
    out_path = state["out_dir"] / (rel + TOKEN_SUFFIX)
    entry = _entry(rel, state["in_dir"], state["reader"])
    try:
        tokens = encode_midi(state["in_dir"] / rel, state["cfg"], reader=state["reader"])
        if not tokens:
            raise MidiEncodeError("no_tokens", f"{rel} encodes to no tokens")
    except MidiEncodeError as err:
        return _failed(entry, state["out_dir"], err.reason, str(err))
    except Exception as err:  # a reader or tokenizer bug must not stop the other files
        return _failed(entry, state["out_dir"], *_unexpected(err))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.tmp-{os.getpid()}")
    tmp.write_text(" ".join(tokens) + "\n", encoding="utf-8")
    os.replace(tmp, out_path)  # the token file appears whole or not at all
    return {**entry, "status": "encoded", "tokens": len(tokens)}


def _worker_gave_no_result(rel: str, error, in_dir: Path, out_dir: Path, reader: str, file_timeout) -> dict:
    """The entry of an input whose worker returned nothing (``timeout_pool``'s error: timeout, crash, or an
    exception the worker could not catch); the killed worker's temporary file goes too."""
    if error == TIMEOUT:
        reason, detail = "timeout", f"{rel} took longer than --file-timeout {file_timeout:g} s"
    elif error == CRASHED:
        reason, detail = "worker_crashed", f"the worker process died while encoding {rel}"
    else:
        reason, detail = _unexpected(error)
    out_path = out_dir / (rel + TOKEN_SUFFIX)
    for leftover in out_path.parent.glob(f"{out_path.name}.tmp-*"):
        leftover.unlink(missing_ok=True)
    return _failed(_entry(rel, in_dir, reader), out_dir, reason, detail)


# ------------------------------------------------------------------------------------------------------ the run
def _settings_difference(old: dict, new: dict) -> str:
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changed)


def _still_done(entry: Optional[dict], in_dir: Path, out_dir: Path, retry_failed: bool) -> bool:
    """True when an earlier run's ``entry`` still stands: same input stamp, and its token file is there (encoded)
    or the failure is not to be retried."""
    if entry is None:
        return False
    try:
        if _input_stamp(in_dir / entry["path"]) != {"size": entry.get("size"), "mtime_ns": entry.get("mtime_ns")}:
            return False
    except OSError:
        return False
    if entry["status"] == "encoded":
        return (out_dir / entry["output"]).is_file()
    return not retry_failed


def run_encode(in_dir: Path, out_dir: Path, cfg, workers: int, reader: str = DEFAULT_READER,
               file_timeout: Optional[float] = DEFAULT_FILE_TIMEOUT, overwrite: bool = False,
               retry_failed: bool = False) -> EncodeRun:
    """Encode every MIDI file under ``in_dir`` into ``out_dir`` (see the module docstring); returns the run."""
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; choose one of {', '.join(READERS)}")
    if reader == "symusic":
        import importlib.util

        if importlib.util.find_spec("symusic") is None:
            raise ImportError("the symusic reader needs the symusic package (pip install symusic), or pass "
                              "--reader miditoolkit")
    files = find_midi_files(in_dir)
    if not files:
        raise FileNotFoundError(f"no MIDI files (*.mid, *.midi) under {in_dir}")
    settings = cfg.to_dict()
    old_settings, previous = (None, {}) if overwrite else encode_manifest.read_previous(out_dir)
    if old_settings is not None and old_settings != settings and previous:
        raise EncodeSettingsError(
            f"{out_dir} holds tokens encoded with other tokenizer settings ({_settings_difference(old_settings, settings)}):"
            " pass --overwrite to encode everything again into it, or use another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / encode_manifest.JOURNAL_NAME).is_file():  # an earlier run was killed: drop its half-written files
        for leftover in out_dir.rglob(f"*{TOKEN_SUFFIX}.tmp-*"):
            leftover.unlink(missing_ok=True)

    kept: Dict[str, dict] = {}
    todo: List[str] = []
    for rel in files:
        entry = previous.get(rel)
        if _still_done(entry, in_dir, out_dir, retry_failed):
            kept[rel] = entry
        else:
            todo.append(rel)
    skipped_failed = sum(e["status"] == "failed" for e in kept.values())
    start = time.perf_counter()
    timeout = file_timeout if file_timeout and file_timeout > 0 else None
    with encode_manifest.Journal(out_dir, settings, fresh=overwrite or not previous) as journal:
        for entry in kept.values():  # the journal alone then describes the whole folder if this run is killed
            journal.add(entry)
        bar = tqdm(total=len(todo), desc=f"encode -> {out_dir}", unit="file", disable=None)
        with bar:
            results = imap_bounded(_encode_one, todo, workers, timeout, _init_worker, (in_dir, out_dir, cfg, reader))
            for rel, entry, error in results:
                if error is not None:
                    entry = _worker_gave_no_result(rel, error, in_dir, out_dir, reader, file_timeout)
                journal.add(entry)
                bar.update(1)
    seconds = time.perf_counter() - start
    _, journaled = encode_manifest.read_journal(out_dir)  # the kept entries and everything added above
    current = [journaled[rel] for rel in files if rel in journaled]
    header = {"tokenizer": settings, "reader": reader, "input_dir": str(in_dir)}
    manifest = encode_manifest.fold(out_dir, header, current)
    return EncodeRun(manifest, len(kept) - skipped_failed, skipped_failed, len(todo), seconds)


def encode_summary(run: EncodeRun) -> str:
    """One line: counts, failures by reason, tokens, what was skipped and the speed."""
    manifest = run.manifest
    text = f"{manifest['encoded']} encoded, {manifest['failed']} failed"
    if manifest["failures_by_reason"]:
        text += " (" + ", ".join(f"{r}: {n}" for r, n in manifest["failures_by_reason"].items()) + ")"
    text += f"; {manifest['tokens']} tokens"
    if run.skipped_encoded or run.skipped_failed:
        text += f"; skipped {run.skipped_encoded} already encoded"
        if run.skipped_failed:
            text += f" and {run.skipped_failed} that failed before (--retry-failed tries them again)"
        text += " (--overwrite encodes everything again)"
    if run.processed:
        text += f"; {run.processed} files in {run.seconds:.1f} s ({run.files_per_second:.1f} files/s)"
    return text
