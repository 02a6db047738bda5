"""One way for a test module to say it needs fairseq (or the audio and browser programs), so that all of them
skip (or fail) alike.

Call ``require_fairseq()`` at the top of a test module, before anything that imports ``museformer_plugin``
(whose ``__init__`` imports fairseq). Without fairseq the module is skipped with the same reason everywhere, shown
by ``pytest -rs`` (``make test`` passes it). With ``MUSEFORMER_REQUIRE_FAIRSEQ=1`` (CI: ``.ci/run``) a missing
fairseq fails the module instead, so a broken install cannot pass as a run of skips.
"""
import importlib
import os

import pytest

FAIRSEQ_REASON = "needs fairseq-fixed (install it with `make install`, see README \"Quick start\")"


def has_fairseq() -> bool:
    """For a single test that needs fairseq in a module that does not (``skipif(not has_fairseq(), ...)``)."""
    try:
        importlib.import_module("fairseq")
    except ImportError:
        return False
    return True


def require_fairseq():
    """The ``fairseq`` module, or a module-level skip (a failure under MUSEFORMER_REQUIRE_FAIRSEQ=1)."""
    try:
        return importlib.import_module("fairseq")
    except ImportError as err:
        if os.environ.get("MUSEFORMER_REQUIRE_FAIRSEQ") == "1":
            pytest.fail(f"{FAIRSEQ_REASON}; MUSEFORMER_REQUIRE_FAIRSEQ=1 is set ({err})", pytrace=False)
        pytest.skip(FAIRSEQ_REASON, allow_module_level=True)


# The programs of the audio and browser tests (Debian package names); .ci/run installs them when missing.
PROGRAM_INSTALL = "apt-get install chromium fluidsynth fluid-soundfont-gm"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # Debian's name first


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, or None."""
    import shutil

    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def missing_programs(browser: bool = False) -> list[str]:
    """What the audio (and, with `browser`, the browser) tests lack: program names or "a GM SoundFont"."""
    import shutil

    from museformer_analysis.audio import AudioToolMissing, find_soundfont

    missing = [] if shutil.which("fluidsynth") else ["fluidsynth"]
    try:
        find_soundfont(None)
    except AudioToolMissing:
        missing.append("a GM SoundFont")
    if browser and find_browser() is None:
        missing.append("chromium")
    return missing


def require_programs(browser: bool = False, module_level: bool = False) -> None:
    """Skip unless FluidSynth, a GM SoundFont (and Chromium) are there, saying what to install; with
    MUSEFORMER_REQUIRE_PROGRAMS=1 (CI: .ci/run installs them first) fail instead."""
    missing = missing_programs(browser)
    if not missing:
        return
    reason = f"needs {', '.join(missing)} (Debian/Ubuntu: {PROGRAM_INSTALL})"
    if os.environ.get("MUSEFORMER_REQUIRE_PROGRAMS") == "1":
        pytest.fail(f"{reason}; MUSEFORMER_REQUIRE_PROGRAMS=1 is set", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)
