"""Token-for-token compatibility with the original MidiProcessor v0.1.5, on real MIDI committed in tests/data/.

tests/data/golden/<setting>/<folder>/<file>.mid.txt is what the original writes for tests/data/midi/<folder>/<file>
(see tests/data/README.md for the files' sources and licences). The settings are those of
benchmarks/golden_compat.py, which runs the same check on the 127 files of ../shared/data/midi.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from data_prep import TokenizerConfig, encode_midi

DATA = Path(__file__).parent / "data"
SETTINGS = {  # the three golden settings (docs/tokenizer.md, "Compatibility with the original")
    "remigen2_lmd6": TokenizerConfig(
        encoding="remigen2", instruments="lmd6", normalize_pitch=True, remove_empty_bars=True, ignore_ts=True
    ),
    "remigen2_general": TokenizerConfig(encoding="remigen2", instruments="general", remove_empty_bars=True),
    "remigen_general": TokenizerConfig(encoding="remigen", instruments="general", remove_empty_bars=True),
}
CASES = sorted(
    (setting, p.relative_to(DATA / "golden" / setting).as_posix()[: -len(".txt")])
    for setting in SETTINGS
    for p in (DATA / "golden" / setting).rglob("*.mid.txt")
)
READERS = ["miditoolkit"] + (["symusic"] if importlib.util.find_spec("symusic") else [])


def test_the_committed_data_covers_every_setting():
    assert {s for s, _ in CASES} == set(SETTINGS)
    assert len(CASES) >= 11
    for _, rel in CASES:
        assert (DATA / "midi" / rel).is_file(), rel


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("setting,rel", CASES, ids=[f"{s}-{Path(r).stem}" for s, r in CASES])
def test_identical_tokens_to_the_original(setting, rel, reader):
    golden = (DATA / "golden" / setting / f"{rel}.txt").read_text().split()
    ours = encode_midi(DATA / "midi" / rel, SETTINGS[setting], reader=reader)
    if ours != golden:
        j = next((k for k in range(min(len(ours), len(golden))) if ours[k] != golden[k]), min(len(ours), len(golden)))
        pytest.fail(f"{rel} ({setting}, {reader}): first difference at token {j}: ours {ours[j:j + 5]}, "
                    f"original {golden[j:j + 5]} ({len(ours)} vs {len(golden)} tokens)")
