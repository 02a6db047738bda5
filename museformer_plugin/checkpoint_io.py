"""Checkpoint files: atomic copies when fairseq saves, and one readable error for a checkpoint that cannot be read.

**Why atomic copies.** fairseq-fixed 0.12.3.1 writes a checkpoint once, atomically (``torch_persistent_save`` writes
``NAME.tmp`` and renames it), and then *copies* it to the other names with ``PathManager.copy``, a plain
``shutil.copyfile`` onto the destination: ``checkpoint_1_4000.pt`` → ``checkpoint_best.pt`` → ``checkpoint_last.pt``
(``checkpoint_utils.save_checkpoint``). A process killed during that copy (a cluster's time limit, an OOM kill,
Ctrl-C twice) leaves a truncated ``checkpoint_last.pt``, and the next run, which restarts from it, dies. The task
replaces the ``PathManager`` that ``fairseq.checkpoint_utils`` uses with one whose ``copy`` of a local file writes
``DST.tmp-PID`` beside the destination and renames it over ``DST``, so a reader only ever sees the old or the new
complete file (``install_atomic_checkpoint_copies``, called from ``MuseformerLMTask.setup_task``). A kill still
leaves the ``.tmp-PID`` file behind; it is never read. The copy is not fsync'ed: this protects against a killed
process, not a power cut (as fairseq's own rename).

**One error for a bad checkpoint.** ``read_checkpoint`` is what every console script (museformer-eval-ppl,
museformer-sample) uses to read a checkpoint: a missing, truncated or foreign file is a ``CheckpointError`` with
one line saying which file, why, and what to do.
"""
from __future__ import annotations

import os
import shutil
import sys

TRUNCATED_HINT = ("it is truncated or not a fairseq checkpoint; use a complete one (checkpoint_last.pt or "
                  "checkpoint_best.pt of the same run, or retrain)")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not from museformer_lm; the message is one line."""


def read_checkpoint(path: str) -> dict:
    """The state dict of fairseq checkpoint ``path`` (on CPU); ``CheckpointError`` with one line if it cannot be read."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found; train one with run_scripts/train.sh (it writes "
                              "SAVE_DIR/checkpoint_best.pt and checkpoint_last.pt)")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as err:  # torch raises several types for a damaged file (RuntimeError, EOFError, Unpickling...)
        reason = f"{type(err).__name__}: {err}".splitlines()[0].split(". ")[0]  # torch's first sentence says it
        raise CheckpointError(f"cannot read checkpoint {path} ({reason}): {TRUNCATED_HINT}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"cannot read checkpoint {path} (no model state in it): {TRUNCATED_HINT}")
    return state


def _is_local(path: str) -> bool:
    return "://" not in str(path)


def make_atomic_path_manager(base):
    """A subclass of fairseq's ``PathManager`` class ``base`` whose ``copy`` of a local file is atomic."""

    class AtomicCopyPathManager(base):
        """fairseq's PathManager, except that a local ``copy`` goes through a temporary file and a rename."""

        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if not (_is_local(src_path) and _is_local(dst_path)):
                return base.copy(src_path, dst_path, overwrite=overwrite)
            if os.path.exists(dst_path) and not overwrite:
                return False
            tmp_path = f"{dst_path}.tmp-{os.getpid()}"
            try:
                shutil.copyfile(src_path, tmp_path)
                os.replace(tmp_path, dst_path)  # atomic on POSIX and Windows: the old or the new file, never half
            except BaseException:
                if os.path.exists(tmp_path):
                    os.remove(tmp_path)
                raise
            return True

    AtomicCopyPathManager.__name__ = AtomicCopyPathManager.__qualname__ = "AtomicCopyPathManager"
    return AtomicCopyPathManager


def install_atomic_checkpoint_copies() -> None:
    """Make ``fairseq.checkpoint_utils`` copy checkpoints atomically (idempotent; only that module is changed)."""
    from fairseq import checkpoint_utils

    current = checkpoint_utils.PathManager
    if getattr(current, "__name__", "") == "AtomicCopyPathManager":
        return
    checkpoint_utils.PathManager = make_atomic_path_manager(current)


class MuseformerInputError(ValueError):
    """Bad user input found inside fairseq's CLIs (a flag that does not fit the data); the message is one line."""


def install_one_line_errors() -> None:
    """Under a fairseq CLI, print an uncaught ``MuseformerInputError`` as one line and exit with status 2.

    fairseq-train / fairseq-validate print a traceback for any exception raised by the task. For our own input
    errors the message already says what is wrong and how to fix it, so the traceback is noise. Any other exception
    keeps the previous hook (the traceback). Idempotent.
    """
    previous = sys.excepthook
    if getattr(previous, "museformer_one_line", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, MuseformerInputError):
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "fairseq"
            sys.stdout.flush()
            print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
            os._exit(2)  # an exit status from an excepthook: SystemExit is not honoured there
        previous(exc_type, exc, tb)

    hook.museformer_one_line = True
    sys.excepthook = hook
