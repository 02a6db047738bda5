"""museformer_plugin: the fairseq --user-dir that registers the ``museformer_lm`` task, model and archs.

Importing it only registers things (no CLI side effects; nothing without fairseq). The tools that run after
training (sampling, perplexity, checkpoint reading) live in the ``museformer_tools`` package, which this one never
imports.
"""


def _have_fairseq() -> bool:
    try:
        import fairseq  # noqa: F401
    except ImportError:  # missing, or broken (its compiled extensions against another numpy)
        return False
    return True


# Without fairseq only the plain-PyTorch parts import (attention/, bar_layout, incremental's window); the modules
# that need fairseq raise the set-up message of fairseq_required.py when imported.
if _have_fairseq():
    from . import task  # noqa: F401  (registers the museformer_lm task)
    from . import model  # noqa: F401  (registers the museformer_lm model and its archs)
    from . import linear_lm  # noqa: F401  (registers the museformer_linear_lm baseline and its archs)
    from . import cli_errors, fairseq_compat

    # Both change only the fairseq CLI module this process runs (nothing when the plugin is imported elsewhere).
    fairseq_compat.install()  # --bf16 / half precision on CPU in fairseq-train (see fairseq_compat.py)
    cli_errors.install()  # our input errors as one line in fairseq-train / -validate / -eval-lm
