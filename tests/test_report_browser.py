"""The report in a real browser: headless Chromium opens index.html from file:// and, after load, every image has
decoded (natural width > 0) and every audio element can play (duration > 0, no media error).

Needs Debian's chromium, fluidsynth and fluid-soundfont-gm: without them the module skips with the install line
(.ci/run installs them and sets MUSEFORMER_REQUIRE_PROGRAMS=1, so there it fails instead).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from needs import find_browser, require_programs

require_programs(browser=True, module_level=True)

from browser_check import check_page, media_problems  # noqa: E402
from midi_factory import make_song  # noqa: E402
from museformer_analysis.cli import main  # noqa: E402

pytest.importorskip("matplotlib")
MIN_SECONDS = 7.5  # the samples are 4 bars of 4/4 at 120 BPM: 8 s, plus FluidSynth's release tail


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report of two 4-bar songs at 120 BPM against a reference of two 8-bar songs."""
    root = tmp_path_factory.mktemp("browser")
    (root / "samples").mkdir()
    (root / "reference").mkdir()
    for seed in range(2):
        make_song(num_bars=4, seed=seed, tempos=[(0, 120.0)]).dump(str(root / "samples" / f"song{seed}.mid"))
        make_song(num_bars=8, seed=10 + seed).dump(str(root / "reference" / f"ref{seed}.mid"))
    out = root / "report"
    assert main(["report", str(root / "samples"), "--reference", str(root / "reference"), "--out", str(out)]) == 0
    return out


def test_every_image_decodes_and_every_audio_can_play(report, tmp_path):
    result = check_page(report / "index.html", find_browser(), tmp_path / "profile")
    assert len(result["images"]) == 1 + 2 * 2 and len(result["audios"]) == 2
    assert media_problems(result, min_seconds=MIN_SECONDS) == []


def test_the_check_sees_a_broken_image_and_a_broken_audio(report, tmp_path):
    """Mutation: the same page with one truncated PNG and one Ogg file of noise must fail the check above."""
    broken = tmp_path / "report"
    shutil.copytree(report, broken)
    png = broken / "pieces" / "song0.png"
    png.write_bytes(png.read_bytes()[:100])
    (broken / "pieces" / "song1.ogg").write_bytes(b"OggS" + bytes(range(256)) * 8)
    result = check_page(broken / "index.html", find_browser(), tmp_path / "profile")
    problems = media_problems(result, min_seconds=MIN_SECONDS)
    assert [p.split(":")[0] for p in problems] == ["pieces/song0.png", "pieces/song1.ogg"], problems
