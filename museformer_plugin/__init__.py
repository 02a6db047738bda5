"""museformer_plugin: the fairseq --user-dir that registers the ``museformer_lm`` task, model and archs.

Importing it only registers things (no CLI side effects); ``sample.py`` and ``eval_ppl.py`` are imported on demand.
"""
try:
    import fairseq  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "museformer_plugin needs fairseq (the `fairseq-fixed==0.12.3.1` package), which is installed separately "
        "with --no-deps so that it cannot replace torch: run `make install` in the repository root"
    ) from err

from . import task  # noqa: F401,E402  (registers the museformer_lm task)
from . import model  # noqa: F401,E402  (registers the museformer_lm model and its archs)
from . import linear_lm  # noqa: F401,E402  (registers the museformer_linear_lm baseline and its archs)
from . import fairseq_compat  # noqa: E402

fairseq_compat.install()  # --bf16 / half precision on CPU in fairseq-train (see fairseq_compat.py)
