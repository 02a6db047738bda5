"""`TokenizerConfig`: every option of the MIDI <-> REMIGEN2/REMIGEN tokenizer, with a JSON round trip."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .constants import DEFAULT_POSITIONS_PER_BEAT

ENCODINGS = ("remigen2", "remigen")
INSTRUMENT_MODES = ("general", "lmd6")
PITCH_WEIGHTINGS = ("count", "duration_velocity")


@dataclass(frozen=True)
class TokenizerConfig:
    # "remigen2": tempo once per bar (Museformer's LMD setting); "remigen": tempo after every onset
    encoding: str = "remigen2"
    # "general": keep every GM program, instruments sorted by id; "lmd6": map programs to the paper's six tracks
    # (lead 80, piano 0, guitar 25, strings 48, bass 43, drums 128) and order them as `6tracks_cst1`
    instruments: str = "general"
    # grid steps per quarter note; 12 = MidiProcessor HEAD (the paper's dict.txt sizes suggest 16 was used once)
    positions_per_beat: int = DEFAULT_POSITIONS_PER_BEAT
    # transpose non-drum notes to C major / A minor (the original's README flag); off by default
    normalize_pitch: bool = False
    # key-detection histogram: "count" = what the original actually does (its last, unweighted pass decides);
    # "duration_velocity" = notes weighted by duration x velocity (the pass the original computes but discards)
    pitch_weighting: str = "count"
    # drop leading empty bars (and anything after the last note's bar); inner empty bars are kept
    remove_empty_bars: bool = False
    # write no s- tokens (the TS still sets bar lengths while encoding; decoding then assumes 4/4)
    ignore_ts: bool = False

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}; got {self.encoding!r}.")
        if self.instruments not in INSTRUMENT_MODES:
            raise ValueError(f"instruments must be one of {INSTRUMENT_MODES}; got {self.instruments!r}.")
        if self.pitch_weighting not in PITCH_WEIGHTINGS:
            raise ValueError(f"pitch_weighting must be one of {PITCH_WEIGHTINGS}; got {self.pitch_weighting!r}.")
        if not isinstance(self.positions_per_beat, int) or not 1 <= self.positions_per_beat <= 480:
            raise ValueError(f"positions_per_beat must be an int in 1..480; got {self.positions_per_beat!r}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TokenizerConfig fields {unknown}; known fields are {sorted(known)}.")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "TokenizerConfig":
        return cls.from_dict(json.loads(s))
