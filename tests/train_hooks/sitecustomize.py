"""Test hooks for fairseq-train runs started by tests/test_train_script.py (never used outside the tests).

Python imports ``sitecustomize`` at start-up from PYTHONPATH, so a fairseq-train process started with this folder
first on PYTHONPATH gets these hooks; each is switched on by one environment variable and does nothing otherwise:

MF_TEST_ID_LOG=PATH        each rank appends "<update> <id> <id> ..." per training batch to PATH.rank<RANK>
MF_TEST_PARAMS_AT=N,M      after update N (and M, ...) each rank saves its parameters to
                           $MF_TEST_PARAMS_OUT.u<N>.rank<RANK>
MF_TEST_SAVED_FIFO=PATH    after each complete checkpoint save, write "saved <updates>" to the FIFO at PATH and wait
                           there forever (the test kills the process: no later update can change anything)
MF_TEST_BREAK_COPY=K       the K-th copy onto a checkpoint_last* file writes only half of the bytes, writes
                           "partial <destination>" to $MF_TEST_SAVED_FIFO and waits forever: a kill inside the save
"""
import os
import sys


def _fifo_message_and_wait(text):
    with open(os.environ["MF_TEST_SAVED_FIFO"], "w") as fifo:
        fifo.write(text + "\n")
    import threading

    threading.Event().wait()  # until SIGKILL


def _install():
    import fairseq.trainer as trainer_mod

    rank = os.environ.get("RANK", "0")
    orig_train_step = trainer_mod.Trainer.train_step

    def train_step(self, samples, raise_oom=False):
        if os.environ.get("MF_TEST_ID_LOG"):
            with open(f"{os.environ['MF_TEST_ID_LOG']}.rank{rank}", "a") as f:
                for s in samples:
                    if s and "id" in s:
                        f.write(" ".join(str(i) for i in [self.get_num_updates()] + s["id"].tolist()) + "\n")
        out = orig_train_step(self, samples, raise_oom)
        at = [int(u) for u in os.environ.get("MF_TEST_PARAMS_AT", "").split(",") if u]
        if self.get_num_updates() in at:
            import torch

            params = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            torch.save(params, f"{os.environ['MF_TEST_PARAMS_OUT']}.u{self.get_num_updates()}.rank{rank}")
        return out

    trainer_mod.Trainer.train_step = train_step

    if os.environ.get("MF_TEST_SAVED_FIFO") and not os.environ.get("MF_TEST_BREAK_COPY"):
        from fairseq import checkpoint_utils

        orig_save = checkpoint_utils.save_checkpoint

        def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
            out = orig_save(cfg, trainer, epoch_itr, val_loss)
            if trainer.data_parallel_rank == 0:
                _fifo_message_and_wait(f"saved {trainer.get_num_updates()}")
            return out

        checkpoint_utils.save_checkpoint = save_checkpoint

    if os.environ.get("MF_TEST_BREAK_COPY"):
        import shutil

        orig_copyfile = shutil.copyfile
        seen = [0]

        def copyfile(src, dst, *args, **kwargs):
            if os.path.basename(str(dst)).startswith("checkpoint_last"):
                seen[0] += 1
                if seen[0] == int(os.environ["MF_TEST_BREAK_COPY"]):
                    with open(src, "rb") as fin, open(dst, "wb") as fout:
                        data = fin.read()
                        fout.write(data[: len(data) // 2])
                    _fifo_message_and_wait(f"partial {dst}")
            return orig_copyfile(src, dst, *args, **kwargs)

        shutil.copyfile = copyfile


if sys.argv and sys.argv[0].endswith("fairseq-train") and any(k.startswith("MF_TEST_") for k in os.environ):
    _install()
