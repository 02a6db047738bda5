"""The encode manifest: what `museformer-prep encode` did to every input, kept so that a killed run loses nothing.

Two files in the token folder:
- ``manifest.jsonl``, the journal of a run in progress: a header line (the tokenizer settings), then one line per
  finished input, appended and flushed as each result arrives. A kill (Ctrl-C, SIGKILL, a full disk) loses at
  most the inputs in flight and possibly a torn last line, which is ignored when read back.
- ``manifest.json``, the folded manifest: written (temporary file + rename) at the end of a run from the previous
  manifest, the journal and the new results; then the journal is removed.

Each entry: ``path`` (relative to the MIDI folder), ``output`` (the token file), ``size`` and ``mtime_ns`` of the
input when it was encoded (a changed input is encoded again), ``status`` (``encoded`` / ``failed``), ``tokens``,
and for failures ``reason`` and ``detail``. Entries are sorted by path, so an interrupted and resumed run writes
the same manifest as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from .split import MANIFEST_NAME

JOURNAL_NAME = "manifest.jsonl"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_previous(out_dir: Path) -> Tuple[Optional[dict], Dict[str, dict]]:
    """(tokenizer settings, {input path: entry}) of earlier runs in ``out_dir``: the folded manifest, then the
    journal of a run that did not finish (its later lines win). (None, {}) for a new folder."""
    settings, entries = None, {}
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        settings = data.get("tokenizer")
        entries.update((e["path"], e) for e in data.get("files", []))
    journal_settings, journaled = read_journal(out_dir)
    entries.update(journaled)
    return journal_settings or settings, entries


def read_journal(out_dir: Path) -> Tuple[Optional[dict], Dict[str, dict]]:
    """(tokenizer settings, {input path: entry}) of ``out_dir``'s journal alone (later lines win); (None, {})
    without one. A run's journal starts with every entry it kept, so at its end the journal describes the folder."""
    settings, entries = None, {}
    journal = out_dir / JOURNAL_NAME
    if journal.is_file():
        with open(journal, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the torn last line of a killed run
                    continue
                if "journal" in record:
                    settings = record.get("tokenizer", settings)
                elif "path" in record:
                    entries[record["path"]] = record
    return settings, entries


class Journal:
    """The append-only ``manifest.jsonl`` of the run in progress (a context manager)."""

    def __init__(self, out_dir: Path, settings: dict, fresh: bool):
        self.path = out_dir / JOURNAL_NAME
        self._file = open(self.path, "w" if fresh else "a", encoding="utf-8")
        self._write({"journal": 1, "tokenizer": settings})

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()  # in the OS's hands now: a killed process loses nothing written here

    def add(self, entry: dict) -> None:
        self._write(entry)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def fold(out_dir: Path, header: dict, entries: Iterable[dict]) -> dict:
    """Write ``manifest.json`` (``header`` + counts + ``entries`` sorted by path), remove the journal; return it."""
    files = sorted(entries, key=lambda e: e["path"])
    failures = Counter(e["reason"] for e in files if e["status"] == "failed")
    manifest = {
        **header,
        "encoded": sum(e["status"] == "encoded" for e in files),
        "failed": sum(failures.values()),
        "failures_by_reason": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        "tokens": sum(e["tokens"] for e in files),
        "files": files,
    }
    atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    (out_dir / JOURNAL_NAME).unlink(missing_ok=True)
    return manifest
