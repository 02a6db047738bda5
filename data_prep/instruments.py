"""GM program -> instrument id: `general` keeps programs; `lmd6` maps them to the paper's six tracks (spec §1.4)."""
from __future__ import annotations

from .constants import DRUM_INSTRUMENT

LEAD, PIANO, GUITAR, STRINGS, BASS, DRUMS = 80, 0, 25, 48, 43, DRUM_INSTRUMENT
ACOUSTIC_BASS = 32  # accepted unchanged by the original's `6tracks_cst1` order (and present in its LMD6 output)

# Ids lmd6 mode can emit: the paper's six, plus 32, which the original keeps as its own id (golden files have i-32).
LMD6_PROGRAMS = (PIANO, GUITAR, ACOUSTIC_BASS, BASS, STRINGS, LEAD, DRUMS)

# `6tracks_cst1` rank (spec §1.4): lead, drums, bass (32), bass (43), guitar, piano, strings.
LMD6_RANK = {LEAD: 1, DRUMS: 2, ACOUSTIC_BASS: 3, BASS: 4, GUITAR: 5, PIANO: 6, STRINGS: 7}

# GM family (program // 8) -> lmd6 track. The original raises KeyError here; we map by family.
_FAMILY_TO_TRACK = {
    0: PIANO,  # 0-7 pianos
    1: PIANO,  # 8-15 chromatic percussion (celesta, vibraphone, marimba, ...): keyboard-like
    2: PIANO,  # 16-23 organs
    3: GUITAR,  # 24-31 guitars
    4: BASS,  # 32-39 basses (32 itself stays 32, see above)
    5: STRINGS,  # 40-47 strings (43 contrabass stays 43 = the bass track)
    6: STRINGS,  # 48-55 ensembles, choirs, orchestra hit
    7: LEAD,  # 56-63 brass: melodic lines
    8: LEAD,  # 64-71 reeds (sax, oboe, clarinet, ...)
    9: LEAD,  # 72-79 pipes (flute, recorder, ...)
    10: LEAD,  # 80-87 synth leads
    11: STRINGS,  # 88-95 synth pads: sustained harmony
    12: STRINGS,  # 96-103 synth effects (mostly pad-like)
    13: GUITAR,  # 104-111 ethnic (sitar, banjo, shamisen, koto, ...): plucked
    14: PIANO,  # 112-119 pitched percussive (steel drums, taiko, melodic tom, ...)
    15: PIANO,  # 120-127 sound effects: no musical counterpart, kept on the neutral piano track
}


def instrument_id(program: int, is_drum: bool, mode: str) -> int:
    """Instrument id of a track: 128 for drums, else the program (general) or its lmd6 track."""
    if is_drum:
        return DRUMS
    program = int(program)
    if not 0 <= program <= 127:
        program = min(max(program, 0), 127)
    if mode == "general":
        return program
    if program in LMD6_RANK:
        return program
    return _FAMILY_TO_TRACK[program // 8]


def instrument_sort_key(mode: str):
    """Order of instruments within one onset: by id (general) or the `6tracks_cst1` rank (lmd6)."""
    if mode == "lmd6":
        return lambda inst: (LMD6_RANK.get(inst, 100), inst)
    return lambda inst: inst
