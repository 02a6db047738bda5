"""Atomic checkpoint copies while fairseq-train saves: a kill during a save cannot truncate checkpoint_last.pt.

fairseq-fixed 0.12.3.1 writes a checkpoint once, atomically (``torch_persistent_save`` writes
``NAME.tmp`` and renames it), and then *copies* it to the other names with ``PathManager.copy``, a plain
``shutil.copyfile`` onto the destination: ``checkpoint_1_4000.pt`` → ``checkpoint_best.pt`` → ``checkpoint_last.pt``
(``checkpoint_utils.save_checkpoint``). A process killed during that copy (a cluster's time limit, an OOM kill,
Ctrl-C twice) leaves a truncated ``checkpoint_last.pt``, and the next run, which restarts from it, dies. When
training starts, the task replaces the ``PathManager`` that ``fairseq.checkpoint_utils`` uses with one whose ``copy``
of a local file writes ``DST.tmp-PID`` beside the destination and renames it over ``DST``, so a reader only ever sees
the old or the new complete file (``install_atomic_checkpoint_copies``, called from ``MuseformerLMTask.begin_epoch``,
which only fairseq's Trainer calls: evaluating or sampling a checkpoint changes nothing). A kill still
leaves the ``.tmp-PID`` file behind; it is never read. The copy is not fsync'ed: this protects against a killed
process, not a power cut (as fairseq's own rename).
"""
from __future__ import annotations

import os
import shutil


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
