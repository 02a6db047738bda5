"""Reading checkpoints after training: one safe reader with one-line errors, and the model rebuilt from it.

``read_checkpoint`` is what every tool (museformer-eval-ppl, museformer-sample, compare_table) uses to read a
checkpoint: a missing, truncated or foreign file is a ``CheckpointError`` with one line saying which file, why, and
what to do. ``load_model`` rebuilds the model and its task from a ``museformer_lm`` checkpoint. Every checkpoint the
task writes carries its dictionary and tokenizer settings (``MuseformerLMTask.state_dict``), so a model loads
without its data directory (``dictionary_from_checkpoint``, ``tokenizer_config_from_checkpoint``).
"""
from __future__ import annotations

import io
import os
from typing import Optional

TRUNCATED_HINT = ("it is truncated or not a fairseq checkpoint; use a complete one (checkpoint_last.pt or "
                  "checkpoint_best.pt of the same run, or retrain)")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not from museformer_lm; the message is one line."""


def require_checkpoint_file(path: str) -> None:
    """``CheckpointError`` (one line, with the fix) when there is no file at ``path``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found; train one with run_scripts/train.sh (it writes "
                              "SAVE_DIR/checkpoint_best.pt and checkpoint_last.pt)")


def read_checkpoint(path: str) -> dict:
    """The state dict of fairseq checkpoint ``path`` (on CPU); ``CheckpointError`` with one line if it cannot be read."""
    from fairseq import checkpoint_utils

    require_checkpoint_file(path)
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as err:  # torch raises several types for a damaged file (RuntimeError, EOFError, Unpickling...)
        reason = f"{type(err).__name__}: {err}".splitlines()[0].split(". ")[0]  # torch's first sentence says it
        raise CheckpointError(f"cannot read checkpoint {path} ({reason}): {TRUNCATED_HINT}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"cannot read checkpoint {path} (no model state in it): {TRUNCATED_HINT}")
    return state


def _task_state(state: dict) -> dict:
    task_state = state.get("task_state")
    return task_state if isinstance(task_state, dict) else {}


def dictionary_from_checkpoint(state: dict):
    """The fairseq ``Dictionary`` a checkpoint carries (``task_state["dictionary"]``, dict.txt's text), or None for a
    checkpoint written before checkpoints kept it."""
    from fairseq.data import Dictionary

    text = _task_state(state).get("dictionary")
    if not isinstance(text, str) or not text.strip():
        return None
    return Dictionary.load(io.StringIO(text))


def tokenizer_config_from_checkpoint(state: dict) -> Optional[dict]:
    """The tokenizer.json contents a checkpoint carries (``task_state["tokenizer"]``), or None (an older checkpoint,
    or a data dir without tokenizer.json)."""
    config = _task_state(state).get("tokenizer")
    return config if isinstance(config, dict) else None


def load_model(checkpoint: str, data_dir: Optional[str] = None, device: str = "cpu", state: Optional[dict] = None,
               model_overrides: Optional[dict] = None):
    """(model in eval mode, task) from a fairseq ``museformer_lm`` checkpoint.

    The dictionary is ``data_dir``'s dict.txt when ``data_dir`` is given (it must be the one the checkpoint was
    trained with), else the one the checkpoint carries. ``state`` is the checkpoint already read by
    ``read_checkpoint``; ``model_overrides`` change the saved config (e.g. ``{"attention_impl": "dense"}``).
    ``CheckpointError`` (one line) when the file cannot be read, is not a museformer_lm checkpoint, or its
    dictionary is neither given nor saved in it or differs from ``data_dir``'s.
    """
    from fairseq import checkpoint_utils
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import overwrite_args_by_name

    from museformer_plugin.task import MuseformerLMTask, read_tokenizer_json

    state = read_checkpoint(checkpoint) if state is None else state
    cfg = state.get("cfg")
    if cfg is None or cfg.get("task") is None or cfg.task.get("_name") != "museformer_lm":
        name = cfg.task.get("_name") if cfg is not None and cfg.get("task") is not None else None
        raise CheckpointError(f"{checkpoint} is not a museformer_lm checkpoint (its task is {name!r})")
    saved = dictionary_from_checkpoint(state)
    if data_dir is None:
        if saved is None:
            raise CheckpointError(f"{checkpoint} carries no dictionary (it was written before checkpoints kept "
                                  "one): pass --data DIR, the data directory it was trained on")
        dictionary, source = saved, f"the dictionary saved in {checkpoint}"
    else:
        dictionary, source = Dictionary.load(os.path.join(data_dir, "dict.txt")), f"{data_dir}/dict.txt"
    emb = state["model"].get("decoder.embed_tokens.weight")
    if emb is None or emb.size(0) != len(dictionary):
        size = None if emb is None else emb.size(0)
        raise CheckpointError(
            f"{checkpoint} was trained with a vocabulary of {size} symbols but {source} has "
            f"{len(dictionary)}: pass the data directory the model was trained on")
    if data_dir is not None:
        trained_on = str(cfg.task.get("data") or "").split(":")[0]  # the training data dir, if it still exists
        if saved is not None:
            reference, where = saved, f"the dictionary saved in {checkpoint}"
        elif trained_on and os.path.isfile(os.path.join(trained_on, "dict.txt")):
            reference, where = Dictionary.load(os.path.join(trained_on, "dict.txt")), f"{trained_on}/dict.txt"
        else:
            reference = None
        if reference is not None and reference.symbols != dictionary.symbols:
            raise CheckpointError(f"{data_dir}/dict.txt differs from {where}, the dictionary {checkpoint} was "
                                  "trained with: pass the data directory the model was trained on")
    overrides = {**(model_overrides or {}), **({"data": data_dir} if data_dir is not None else {})}
    if overrides:
        overwrite_args_by_name(cfg, overrides)
    # The task is built here, not by fairseq's setup_task, which needs a data directory; fairseq then restores the
    # task's saved state (the tokenizer config when the data dir has none, see MuseformerLMTask.load_state_dict).
    task = MuseformerLMTask(cfg.task, dictionary, read_tokenizer_json(data_dir) if data_dir is not None else None)
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], task=task, state=state)
    model = models[0].to(device).eval()
    return model, task
