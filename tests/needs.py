"""One way for a test module to say it needs fairseq, so that all of them skip (or fail) alike.

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
