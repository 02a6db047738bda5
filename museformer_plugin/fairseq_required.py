"""The one place that says fairseq is missing: imported first by every module that needs fairseq.

The attention backends, the bar layout and the cached decoding window are plain PyTorch and import without
fairseq (a GPU machine can test them before fairseq is built there); the task, the models, evaluation and
sampling need it.
"""
try:
    import fairseq  # noqa: F401
except ImportError as err:  # missing, or broken (its compiled extensions against another numpy)
    raise ImportError(
        "museformer_plugin needs fairseq (the `fairseq-fixed==0.12.3.1` package), which is installed separately "
        "with --no-deps so that it cannot replace torch: run `make install` in the repository root"
    ) from err
