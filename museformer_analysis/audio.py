"""MIDI -> WAV, FLAC or Ogg Vorbis with the FluidSynth program and a General MIDI SoundFont.

Debian/Ubuntu: apt-get install fluidsynth fluid-soundfont-gm.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from data_prep.constants import DEFAULT_POSITIONS_PER_BEAT

INSTALL_HINT = "apt-get install fluidsynth fluid-soundfont-gm"
# Where Debian/Ubuntu, Fedora, Arch and Homebrew put a GM SoundFont; the first one that exists is used.
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # Debian/Ubuntu fluid-soundfont-gm
    "/usr/share/sounds/sf2/default-GM.sf2",  # Debian's alternatives link
    "/usr/share/soundfonts/default.sf2",  # Fedora, Arch
    "/usr/share/soundfonts/FluidR3_GM.sf2",  # Arch soundfont-fluid
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)
SAMPLE_RATE = 44100  # Hz, CD quality
# Output file suffix -> FluidSynth's -T file type (it writes these through libsndfile). The type is always passed:
# FluidSynth 2.3 guesses it from the suffix only for .oga, not .ogg, and silently writes WAV for anything unknown.
AUDIO_FILE_TYPES = {".wav": "wav", ".flac": "flac", ".ogg": "oga", ".oga": "oga"}
RENDER_TIMEOUT_S = 600  # a pathological file must not hang the command forever


class AudioToolMissing(FileNotFoundError):
    """FluidSynth or a SoundFont is not there; the message says what to install."""


def find_soundfont(soundfont: str | None = None) -> str:
    """The SoundFont to use: `soundfont` if given (it must exist), else the first GM SoundFont installed."""
    if soundfont is not None:
        if not os.path.isfile(soundfont):
            raise AudioToolMissing(f"SoundFont {soundfont} not found; pass an existing .sf2 file to --soundfont, "
                                   f"or install a General MIDI one with `{INSTALL_HINT}` and leave --soundfont out.")
        return soundfont
    for path in SOUNDFONT_CANDIDATES:
        if os.path.isfile(path):
            return path
    raise AudioToolMissing(f"no General MIDI SoundFont found (looked in {', '.join(SOUNDFONT_CANDIDATES[:3])}, ...); "
                           f"install one with `{INSTALL_HINT}` or pass --soundfont FILE.sf2.")


def find_fluidsynth() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise AudioToolMissing(f"the fluidsynth program is not on PATH; install it with `{INSTALL_HINT}`.")
    return exe


def audio_file_type(audio_path: str) -> str:
    """FluidSynth's -T value for `audio_path`'s suffix; ValueError for a suffix it cannot write."""
    suffix = os.path.splitext(audio_path)[1].lower()
    if suffix not in AUDIO_FILE_TYPES:
        raise ValueError(f"{audio_path}: cannot tell the audio format from '{suffix or 'no suffix'}'; name the "
                         f"output with one of {', '.join(AUDIO_FILE_TYPES)}.")
    return AUDIO_FILE_TYPES[suffix]


def render_midi(midi_path: str, audio_path: str, soundfont: str | None = None, sample_rate: int = SAMPLE_RATE) -> str:
    """Write `audio_path` (stereo; 16-bit WAV or FLAC, or Ogg Vorbis, by its suffix) from `midi_path`. Raises
    AudioToolMissing (FluidSynth or SoundFont missing), FileNotFoundError (no MIDI file), ValueError (unknown
    suffix) or RuntimeError (FluidSynth failed, with its last output)."""
    file_type = audio_file_type(audio_path)
    sf2 = find_soundfont(soundfont)
    exe = find_fluidsynth()
    if not os.path.isfile(midi_path):
        raise FileNotFoundError(f"{midi_path}: no such MIDI file.")
    if os.path.dirname(audio_path):
        os.makedirs(os.path.dirname(audio_path), exist_ok=True)
    # -n: no MIDI input driver, -i: no shell, -F: render to file, -T: its type, -r: sample rate, -q: quiet (>= 2.0)
    cmd = [exe, "-n", "-i", "-q", "-F", audio_path, "-T", file_type, "-r", str(sample_rate), sf2, midi_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"fluidsynth did not finish {midi_path} within {RENDER_TIMEOUT_S} s.") from e
    if proc.returncode != 0 or not os.path.isfile(audio_path) or os.path.getsize(audio_path) <= 44:  # header only
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise RuntimeError(f"fluidsynth failed on {midi_path} (exit {proc.returncode}): "
                           f"{' | '.join(tail) or 'no output'}")
    return audio_path


def render_tokens(token_path: str, audio_path: str, soundfont: str | None = None,
                  positions_per_beat: int = DEFAULT_POSITIONS_PER_BEAT) -> str:
    """Decode a token file (*.mid.txt) to a temporary MIDI file and render that."""
    from .piece import decode_token_file

    audio_file_type(audio_path), find_soundfont(soundfont), find_fluidsynth()  # fail before decoding anything
    midi = decode_token_file(token_path, positions_per_beat)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_midi = os.path.join(tmp, "decoded.mid")
        midi.dump(tmp_midi)
        return render_midi(tmp_midi, audio_path, soundfont)
