"""Encoding a MIDI folder: every *.mid / *.midi under it → one token file each (in parallel), plus a manifest
that records every file's outcome (encoded, or failed with its reason). The ``museformer-prep encode`` / ``all``
pipeline without its command line; benchmarks list MIDI files with ``find_midi_files`` too.
"""
from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from . import split as split_mod
from .constants import MIDI_SUFFIXES
from .split import MANIFEST_NAME


def find_midi_files(in_dir: Path) -> list[str]:
    """Relative POSIX paths of every *.mid / *.midi (any case) under `in_dir`, sorted."""
    if not in_dir.is_dir():
        raise FileNotFoundError(f"MIDI folder {in_dir} does not exist")
    found = (p for p in in_dir.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    return sorted(p.relative_to(in_dir).as_posix() for p in found)


_WORKER_STATE: dict = {}


def _init_encode_worker(in_dir: Path, out_dir: Path, cfg, reader: str) -> None:
    _WORKER_STATE.update(in_dir=in_dir, out_dir=out_dir, cfg=cfg, reader=reader)


def _encode_one(rel: str) -> dict:
    """Encode one MIDI file and write its token file. Returns its manifest entry."""
    from .errors import MidiEncodeError
    from .midi_to_tokens import encode_midi

    state = _WORKER_STATE
    out_path = state["out_dir"] / (rel + split_mod.TOKEN_SUFFIX)
    entry = {"path": rel, "output": rel + split_mod.TOKEN_SUFFIX}
    try:
        tokens = encode_midi(state["in_dir"] / rel, state["cfg"], reader=state["reader"])
        if not tokens:
            raise MidiEncodeError("no_tokens", f"{rel} encodes to no tokens")
    except MidiEncodeError as err:
        reason, detail = err.reason, str(err)
    except Exception as err:  # a reader or tokenizer bug must not stop the other files; it is counted and shown
        reason, detail = f"unexpected_{type(err).__name__}", f"{type(err).__name__}: {err}"
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(" ".join(tokens) + "\n", encoding="utf-8")
        return {**entry, "status": "encoded", "tokens": len(tokens)}
    out_path.unlink(missing_ok=True)  # never leave a stale token file from an earlier run next to a failure
    return {**entry, "status": "failed", "tokens": 0, "reason": reason, "detail": detail}


def run_encode(in_dir: Path, out_dir: Path, cfg, workers: int, reader: str = "miditoolkit") -> dict:
    """Encode every MIDI file under `in_dir` into `out_dir`; write and return the manifest."""
    if reader == "symusic":
        import importlib.util

        if importlib.util.find_spec("symusic") is None:
            raise ImportError("--reader symusic needs the symusic package: pip install symusic (or the `fast` extra)")
    files = find_midi_files(in_dir)
    if not files:
        raise FileNotFoundError(f"no MIDI files (*.mid, *.midi) under {in_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    init_args = (in_dir, out_dir, cfg, reader)
    entries = []
    bar = tqdm(total=len(files), desc=f"encode -> {out_dir}", unit="file", disable=None)
    with bar:
        if workers <= 1 or len(files) == 1:
            _init_encode_worker(*init_args)
            for entry in map(_encode_one, files):
                entries.append(entry)
                bar.update(1)
        else:
            chunksize = max(1, min(16, len(files) // (workers * 8)))
            with multiprocessing.Pool(workers, _init_encode_worker, init_args) as pool:
                for entry in pool.imap_unordered(_encode_one, files, chunksize=chunksize):
                    entries.append(entry)
                    bar.update(1)
    entries.sort(key=lambda e: e["path"])
    failures = Counter(e["reason"] for e in entries if e["status"] == "failed")
    manifest = {
        "tokenizer": cfg.to_dict(),
        "reader": reader,
        "input_dir": str(in_dir),
        "encoded": sum(e["status"] == "encoded" for e in entries),
        "failed": sum(failures.values()),
        "failures_by_reason": dict(failures.most_common()),
        "tokens": sum(e["tokens"] for e in entries),
        "files": entries,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def encode_summary(manifest: dict) -> str:
    text = f"{manifest['encoded']} encoded, {manifest['failed']} failed"
    if manifest["failures_by_reason"]:
        text += " (" + ", ".join(f"{r}: {n}" for r, n in manifest["failures_by_reason"].items()) + ")"
    return text + f"; {manifest['tokens']} tokens"
