"""Reading checkpoints after training: one safe reader with one-line errors, and the model rebuilt from it.

``read_checkpoint`` is what every tool (museformer-eval-ppl, museformer-sample, compare_table) uses to read a
checkpoint: a missing, truncated or foreign file is a ``CheckpointError`` with one line saying which file, why, and
what to do. ``load_model`` rebuilds the model and its task from a ``museformer_lm`` checkpoint.
"""
from __future__ import annotations

import os

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


def load_model(checkpoint: str, data_dir: str, device: str = "cpu"):
    """(model in eval mode, task) from a fairseq ``museformer_lm`` checkpoint, with the dictionary of ``data_dir``.

    ``CheckpointError`` (one line) when the file cannot be read, is not a museformer_lm checkpoint, or was trained
    with another dictionary than ``data_dir``'s.
    """
    from fairseq import checkpoint_utils
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import overwrite_args_by_name

    import museformer_plugin  # noqa: F401  (registers the museformer_lm task and model)

    state = read_checkpoint(checkpoint)
    cfg = state.get("cfg")
    if cfg is None or cfg.get("task") is None or cfg.task.get("_name") != "museformer_lm":
        name = cfg.task.get("_name") if cfg is not None and cfg.get("task") is not None else None
        raise CheckpointError(f"{checkpoint} is not a museformer_lm checkpoint (its task is {name!r})")
    dictionary = Dictionary.load(os.path.join(data_dir, "dict.txt"))
    emb = state["model"].get("decoder.embed_tokens.weight")
    if emb is None or emb.size(0) != len(dictionary):
        size = None if emb is None else emb.size(0)
        raise CheckpointError(
            f"{checkpoint} was trained with a vocabulary of {size} symbols but {data_dir}/dict.txt has "
            f"{len(dictionary)}: pass the data directory the model was trained on")
    trained_on = str(cfg.task.get("data") or "").split(":")[0]  # the training data dir, if it still exists
    if trained_on and os.path.isfile(os.path.join(trained_on, "dict.txt")):
        other = Dictionary.load(os.path.join(trained_on, "dict.txt"))
        if other.symbols != dictionary.symbols:
            raise CheckpointError(f"{data_dir}/dict.txt differs from {trained_on}/dict.txt, the dictionary "
                                  f"{checkpoint} was trained with: pass that data directory")
    overwrite_args_by_name(cfg, {"data": data_dir})
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": data_dir}, state=state)
    model = models[0].to(device).eval()
    return model, task
