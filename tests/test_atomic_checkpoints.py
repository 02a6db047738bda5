"""atomic_checkpoints: fairseq's checkpoint copies go through a temporary file and a rename."""
import shutil
from pathlib import Path

import pytest

from needs import require_fairseq

require_fairseq()

from museformer_plugin import atomic_checkpoints  # noqa: E402
from museformer_plugin.atomic_checkpoints import make_atomic_path_manager  # noqa: E402


class PlainPathManager:
    """Stands for fairseq's PathManager: a non-atomic copy straight onto the destination."""

    @staticmethod
    def copy(src_path, dst_path, overwrite=False):
        return shutil.copyfile(src_path, dst_path)


def test_atomic_copy_keeps_the_old_file_when_the_copy_dies(tmp_path, monkeypatch):
    manager = make_atomic_path_manager(PlainPathManager)
    src, dst = tmp_path / "new.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old complete checkpoint")
    assert manager.copy(str(src), str(dst), overwrite=False) is False  # fairseq's overwrite semantics
    assert dst.read_bytes() == b"old complete checkpoint"

    def dies_half_way(a, b, *args, **kwargs):
        Path(b).write_bytes(Path(a).read_bytes()[:100])
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the copy

    monkeypatch.setattr(shutil, "copyfile", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        manager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old complete checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt", "new.pt"], "temporary file left"
    monkeypatch.undo()
    assert manager.copy(str(src), str(dst), overwrite=True) is True
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt", "new.pt"]


def test_installed_only_in_checkpoint_utils():
    """The task installs the atomic copy into fairseq.checkpoint_utils (idempotently), nowhere else."""
    from fairseq import checkpoint_utils, file_io

    atomic_checkpoints.install_atomic_checkpoint_copies()
    atomic_checkpoints.install_atomic_checkpoint_copies()
    assert checkpoint_utils.PathManager.__name__ == "AtomicCopyPathManager"
    assert checkpoint_utils.PathManager.__mro__[1] is file_io.PathManager  # wrapped once, not twice
    assert file_io.PathManager.copy is not checkpoint_utils.PathManager.copy
