"""The one place that says fairseq is missing: imported first by every module that needs fairseq.

The attention backends, the bar layout and the cached decoding window are plain PyTorch and import without
fairseq (a GPU machine can test them before fairseq is built there); the task, the models, evaluation and
sampling need it.
"""



def have_fairseq() -> bool:
    try:
        import fairseq  # noqa: F401
    except ImportError:  # missing, or broken (its compiled extensions against another numpy)
        return False
    return True


HAVE_FAIRSEQ = have_fairseq()

MISSING_FAIRSEQ = (
    "museformer_plugin needs fairseq (the `fairseq-fixed==0.12.3.1` package), which is installed separately "
    "with --no-deps so that it cannot replace torch: run `make install` in the repository root"
)

if not HAVE_FAIRSEQ:
    raise ImportError(MISSING_FAIRSEQ)
