"""Read a MIDI file into a miditoolkit `MidiFile`, turning every reader failure into `MidiEncodeError`."""
from __future__ import annotations

import os

import miditoolkit

from .errors import MidiEncodeError

READERS = ("miditoolkit", "symusic")


def read_midi(path: str | os.PathLike, reader: str = "miditoolkit") -> miditoolkit.MidiFile:
    """Load `path`. reader="miditoolkit" is the reference; "symusic" (optional, `pip install symusic`) parses
    faster in C++ and is converted to the same miditoolkit objects."""
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}; got {reader!r}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MidiEncodeError("missing_file", f"{path}: no such file.")
    if os.path.getsize(path) == 0:
        raise MidiEncodeError("empty_file", f"{path}: the file is empty (0 bytes).")
    if reader == "symusic":
        return _read_symusic(path)
    try:
        return miditoolkit.MidiFile(path)
    except Exception as e:  # mido raises OSError, EOFError, KeyError, ValueError, IndexError... on bad bytes
        raise _read_error(path, e) from e


_EXPLAIN = {
    "not_midi": "it does not start with a MIDI header (MThd), so it is not a Standard MIDI File",
    "truncated": "the file ends in the middle of a track (a truncated download or copy?)",
    "unreadable": "the MIDI data is corrupt",
}


def _classify(e: Exception) -> str:
    msg = str(e).lower()
    if "mthd" in msg or "header" in msg:
        return "not_midi"
    if isinstance(e, EOFError) or "eof" in msg or "end of" in msg or "unexpected end" in msg:
        return "truncated"
    return "unreadable"


def _read_error(path: str, e: Exception) -> MidiEncodeError:
    reason = _classify(e)
    detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return MidiEncodeError(reason, f"{path}: cannot be read as MIDI: {_EXPLAIN[reason]} ({detail}).")


def _read_symusic(path: str) -> miditoolkit.MidiFile:
    try:
        import symusic
    except ImportError as e:
        raise ImportError("reader='symusic' needs the symusic package: pip install symusic") from e
    try:
        score = symusic.Score(path, ttype="tick")
    except Exception as e:
        raise _read_error(path, e) from e
    midi = miditoolkit.MidiFile(ticks_per_beat=int(score.ticks_per_quarter))
    midi.tempo_changes = [miditoolkit.TempoChange(float(t.qpm), int(t.time)) for t in score.tempos]
    midi.time_signature_changes = [
        miditoolkit.TimeSignature(int(t.numerator), int(t.denominator), int(t.time)) for t in score.time_signatures
    ]
    for track in score.tracks:
        inst = miditoolkit.Instrument(program=int(track.program), is_drum=bool(track.is_drum), name=track.name)
        inst.notes = [
            miditoolkit.Note(int(n.velocity), int(n.pitch), int(n.time), int(n.time + n.duration))
            for n in track.notes
        ]
        midi.instruments.append(inst)
    return midi
