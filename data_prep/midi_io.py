"""Read a MIDI file into a miditoolkit `MidiFile`, turning every reader failure into `MidiEncodeError`."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import miditoolkit
import mido

from .errors import MidiEncodeError

READERS = ("miditoolkit", "symusic")
DEFAULT_BPM_MIDITOOLKIT = 120.0  # what miditoolkit lists at tick 0 when a file has no tempo there


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
    """symusic parses the notes; the events on which it and miditoolkit disagree are taken from the file's bytes
    the way miditoolkit reads them (see `scan_midi`), and a file whose notes could differ is read by miditoolkit.

    Where the two readers differ (each case is a test in tests/test_midi_io.py):
    - program changes: miditoolkit files a note under the program in force at its note-off, symusic at its
      note-on, so a program change on a channel while one of its notes sounds moves that note to another
      instrument in one of them: such files are read by miditoolkit;
    - tempo: miditoolkit keeps a tempo only if it differs from the one listed before it (in track order, not
      time order) and a tempo at tick 0 in any track replaces all tempi read so far; symusic keeps every tempo,
      sorted by time in an order that is not stable for events at one tick;
    - time signatures: miditoolkit sorts them by time keeping the file's order at one tick (the encoder takes
      the last one); symusic's sort need not.
    """
    try:
        import symusic
    except ImportError as e:
        raise ImportError("reader='symusic' needs the symusic package: pip install symusic") from e
    try:
        with open(path, "rb") as f:
            data = f.read()
        score = symusic.Score.from_midi(data)
    except Exception:  # the reference decides: it reads what symusic rejects, or its error names the cause
        try:
            return miditoolkit.MidiFile(path)
        except Exception as e:
            raise _read_error(path, e) from e
    try:
        scan = scan_midi(data)
    except (IndexError, ValueError, ZeroDivisionError):  # bytes symusic accepts but mido may not: the reference
        scan = None
    if scan is None or scan.program_change_during_note:
        try:
            return miditoolkit.MidiFile(path)
        except Exception as e:
            raise _read_error(path, e) from e
    midi = miditoolkit.MidiFile(ticks_per_beat=int(score.ticks_per_quarter))
    midi.tempo_changes = scan.tempo_changes
    midi.time_signature_changes = scan.time_signature_changes
    for track in score.tracks:
        inst = miditoolkit.Instrument(program=int(track.program), is_drum=bool(track.is_drum), name=track.name)
        inst.notes = [
            miditoolkit.Note(int(n.velocity), int(n.pitch), int(n.time), int(n.time + n.duration))
            for n in track.notes
        ]
        midi.instruments.append(inst)
    return midi


@dataclass
class MidiScan:
    tempo_changes: list  # miditoolkit.TempoChange, exactly as miditoolkit lists them
    time_signature_changes: list  # miditoolkit.TimeSignature, sorted by tick, the file's order at one tick
    program_change_during_note: bool  # a channel changes program while one of its notes sounds


_META, _SYSEX = 0xFF, (0xF0, 0xF7)
_TEMPO, _TIME_SIGNATURE = 0x51, 0x58
_PROGRAM_CHANGE, _NOTE_ON = 0xC0, 0x90
_STATUS_C = re.compile(rb"[\xc0-\xcf]")


def _varlen(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    while True:
        b = data[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, i


def scan_midi(data: bytes) -> MidiScan:
    """Tempo and time-signature events (as miditoolkit 1.0 lists them) and whether a channel changes program while
    one of its notes sounds, read from the bytes of a Standard MIDI File with mido's running-status rules.

    Only tracks with a tempo or time-signature event are walked event by event; in the others the walk stops at
    the first note-on when no program-change status byte follows it (most note tracks). Raises IndexError or
    ValueError on bytes it cannot walk."""
    if data[:4] != b"MThd":
        raise ValueError("no MThd header")
    pos = 8 + int.from_bytes(data[4:8], "big")
    tempos: list[tuple[int, int]] = []  # (tick, microseconds per quarter), file order
    signatures: list[tuple[int, int, int]] = []  # (tick, numerator, denominator), file order
    program_during_note = False
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "big")
        start, end = pos + 8, pos + 8 + size
        pos = end
        if kind != b"MTrk":
            continue
        if end > len(data):
            raise ValueError("track chunk runs past the end of the file")
        chunk = data[start:end]
        full_walk = b"\xff\x51" in chunk or b"\xff\x58" in chunk
        i, tick, status = start, 0, None
        sounding = [0] * 16  # notes sounding per channel (note-ons not yet ended by a note-off)
        sounding_pitch: dict[int, int] = {}  # channel * 128 + pitch -> notes sounding
        next_c = start - 1  # position of the next byte that could be a program-change status byte
        while i < end:
            delta, i = _varlen(data, i)
            tick += delta
            b = data[i]
            if b >= 0x80:
                i += 1
                if b != _META:  # meta events do not set running status (mido)
                    status = b
            elif status is None:
                raise ValueError("running status without a status byte")
            else:
                b = status
            if b == _META:
                meta_type = data[i]
                length, i = _varlen(data, i + 1)
                payload = data[i : i + length]
                i += length
                if meta_type == _TEMPO:
                    tempos.append((tick, int.from_bytes(payload[:3], "big")))
                elif meta_type == _TIME_SIGNATURE:
                    signatures.append((tick, payload[0], 2 ** payload[1]))
                continue
            if b in _SYSEX:
                length, i = _varlen(data, i)
                i += length
                continue
            kind_, channel = b & 0xF0, b & 0x0F
            if kind_ in (_PROGRAM_CHANGE, 0xD0):
                if kind_ == _PROGRAM_CHANGE and sounding[channel]:
                    program_during_note = True
                i += 1
                continue
            key = channel * 128 + data[i]
            if kind_ == 0x80 or (kind_ == _NOTE_ON and data[i + 1] == 0):
                if sounding_pitch.get(key):  # both readers end the oldest sounding note of this pitch
                    sounding_pitch[key] -= 1
                    sounding[channel] -= 1
            elif kind_ == _NOTE_ON:
                sounding_pitch[key] = sounding_pitch.get(key, 0) + 1
                sounding[channel] += 1
                if not full_walk and next_c < i + 2:
                    match = _STATUS_C.search(data, i + 2, end)
                    if match is None:
                        break  # no program change can follow in this track
                    next_c = match.start()
            i += 2
    tempo_changes = [miditoolkit.TempoChange(DEFAULT_BPM_MIDITOOLKIT, 0)]
    for tick, mspq in tempos:  # miditoolkit 1.0's rule (MidiFile._load_tempo_changes)
        bpm = mido.tempo2bpm(mspq)
        if tick == 0:
            tempo_changes = [miditoolkit.TempoChange(bpm, 0)]
        elif bpm != tempo_changes[-1].tempo:
            tempo_changes.append(miditoolkit.TempoChange(bpm, tick))
    signatures.sort(key=lambda t: t[0])  # stable: the file's order at one tick
    return MidiScan(
        tempo_changes,
        [miditoolkit.TimeSignature(num, den, tick) for tick, num, den in signatures],
        program_during_note,
    )
