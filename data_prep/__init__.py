"""data_prep: MIDI <-> REMIGEN2/REMIGEN tokens, fairseq dictionaries and corpus tools (no torch, no fairseq)."""
from .config import TokenizerConfig
from .errors import MidiEncodeError
from .grammar import count_errors
from .midi_to_tokens import encode_midi
from .tokens_to_midi import DecodeResult, decode_tokens
from .vocab import build_vocab, write_dict

__all__ = [
    "TokenizerConfig",
    "MidiEncodeError",
    "encode_midi",
    "decode_tokens",
    "DecodeResult",
    "build_vocab",
    "write_dict",
    "count_errors",
]
