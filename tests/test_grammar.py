"""grammar.count_errors: 0 on encoder output, one per violation otherwise."""
from __future__ import annotations

import pytest

from data_prep import TokenizerConfig, count_errors, encode_midi
from midi_factory import make_song

GOOD_REMIGEN2 = "s-9 t-35 o-0 i-0 p-64 d-6 v-20 p-60 d-12 v-20 i-128 p-164 d-3 v-25 o-24 i-33 p-40 d-18 v-22 b-1 s-9 t-35 b-1"
GOOD_REMIGEN = "s-9 o-0 t-35 i-0 p-64 d-6 v-20 o-24 t-35 i-33 p-40 d-18 v-22 b-1 s-9 b-1 b-1"


@pytest.mark.parametrize("cfg", [
    TokenizerConfig(), TokenizerConfig(encoding="remigen"),
    TokenizerConfig(instruments="lmd6", ignore_ts=True, remove_empty_bars=True, normalize_pitch=True),
    TokenizerConfig(encoding="remigen", ignore_ts=True, remove_empty_bars=True),
], ids=["remigen2", "remigen", "lmd6", "remigen_nots_trim"])
def test_encoder_output_has_no_errors(cfg):
    for seed in range(3):
        toks = encode_midi(make_song(8, seed=seed), cfg)
        assert count_errors(toks) == 0
        assert count_errors(toks, cfg) == 0


def test_hand_written_sequences_are_valid():
    assert count_errors(GOOD_REMIGEN2) == 0
    assert count_errors(GOOD_REMIGEN) == 0


@pytest.mark.parametrize("tokens,n", [
    ("o-0 i-0 p-60 v-20 b-1", 1),  # v- after p- (missing d-)
    ("o-0 i-0 d-3 v-20 b-1", 1),  # d- after i-
    ("o-0 p-60 d-3 v-1 b-1", 1),  # p- right after o-
    ("o-5 i-0 p-60 d-3 v-1 o-5 i-0 p-61 d-3 v-1 b-1", 1),  # onset not increasing
    ("o-5 i-0 p-60 d-3 v-1 i-0 p-61 d-3 v-1 b-1", 1),  # instrument repeated within an onset
    ("o-0 i-128 p-60 d-3 v-1 i-0 p-160 d-3 v-1 b-1", 2),  # pitch family vs drums
    ("o-0 i-0 p-60 d-3 v-1 hello </s> b-1", 2),  # unknown and special tokens
    ("t-3 s-9 b-1", 1),  # s- after t-
])
def test_errors_are_counted(tokens, n):
    assert count_errors(tokens) == n


def test_config_checks_value_ranges():
    cfg = TokenizerConfig(instruments="lmd6", ignore_ts=True)
    assert count_errors("s-9 t-35 o-0 i-0 p-60 d-3 v-1 b-1") == 0
    assert count_errors("s-9 t-35 o-0 i-0 p-60 d-3 v-1 b-1", cfg) == 1  # no s- in this vocabulary
    assert count_errors("t-35 o-0 i-7 p-60 d-3 v-1 b-1", cfg) == 1  # i-7 is not an lmd6 instrument
    assert count_errors("s-9 t-35 o-50 i-0 p-60 d-3 v-1 b-1", TokenizerConfig()) == 1  # beyond 4/4 (48 positions)
    assert count_errors("s-8 t-35 o-40 i-0 p-60 d-3 v-1 b-1", TokenizerConfig()) == 1  # beyond 3/4 (36 positions)
    assert count_errors("t-35 o-50 i-0 p-60 d-3 v-1 b-1", cfg) == 0  # no s-: bar lengths unknown, not an error
    assert count_errors("t-35 o-50 i-0 p-60 d-3 v-1 b-1") == 0  # without cfg bar lengths are not checked
