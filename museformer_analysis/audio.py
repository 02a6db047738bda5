"""MIDI -> WAV with the FluidSynth program and a General MIDI SoundFont (Debian: fluidsynth, fluid-soundfont-gm)."""
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


def render_midi(midi_path: str, wav_path: str, soundfont: str | None = None, sample_rate: int = SAMPLE_RATE) -> str:
    """Write `wav_path` (16-bit stereo WAV) from `midi_path`. Raises AudioToolMissing (FluidSynth or SoundFont
    missing), FileNotFoundError (no MIDI file) or RuntimeError (FluidSynth failed, with its last output)."""
    sf2 = find_soundfont(soundfont)
    exe = find_fluidsynth()
    if not os.path.isfile(midi_path):
        raise FileNotFoundError(f"{midi_path}: no such MIDI file.")
    if os.path.dirname(wav_path):
        os.makedirs(os.path.dirname(wav_path), exist_ok=True)
    # -n: no MIDI input driver, -i: no shell, -F: render to file, -r: sample rate, -q: quiet (FluidSynth >= 2)
    cmd = [exe, "-n", "-i", "-q", "-F", wav_path, "-r", str(sample_rate), sf2, midi_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"fluidsynth did not finish {midi_path} within {RENDER_TIMEOUT_S} s.") from e
    if proc.returncode != 0 or not os.path.isfile(wav_path) or os.path.getsize(wav_path) <= 44:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise RuntimeError(f"fluidsynth failed on {midi_path} (exit {proc.returncode}): "
                           f"{' | '.join(tail) or 'no output'}")
    return wav_path


def render_tokens(token_path: str, wav_path: str, soundfont: str | None = None,
                  positions_per_beat: int = DEFAULT_POSITIONS_PER_BEAT) -> str:
    """Decode a token file (*.mid.txt) to a temporary MIDI file and render that."""
    from .piece import decode_token_file

    find_soundfont(soundfont), find_fluidsynth()  # say what is missing before decoding anything
    midi = decode_token_file(token_path, positions_per_beat)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_midi = os.path.join(tmp, "decoded.mid")
        midi.dump(tmp_midi)
        return render_midi(tmp_midi, wav_path, soundfont)
