"""Reading a checkpoint of the ORIGINAL Museformer (microsoft/muzic) and translating it to this project's model.

The original's fairseq 0.10.2 training writes ``{"args": argparse.Namespace, "model": state dict, ...}`` (a later
fairseq writes ``"cfg"``, a plain dict whose ``model`` section may still be a Namespace). Its model is the same
function as ``museformer_lm`` (tested to 1e-4 against the original's own outputs, ``tests/test_import_original.py``)
with other parameter names and a few parameters stored twice:

- the summary stream shares every module with the regular stream (``attn_share_*``, ``share_ffn``, ...), and the
  original registers them under both names (``sum_fc1`` and ``reg_fc1`` are one tensor): kept once here, after
  checking that the two names really hold the same values;
- the q/k/v biases of each stream are three vectors there, one (3, C) parameter per stream here.

``NAME_MAP`` / ``LAYER_NAME_MAP`` / ``LAYER_BIAS_STACKS`` are the whole map (docs/design.md lists it with the
reasons). Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` with ``argparse.Namespace``
as the only extra class allowed.
"""
from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

ORIGINAL_TASK = "museformer_language_modeling"
ORIGINAL_ARCH_PREFIX = "museformer_lm"  # museformer_lm_v2s1 and the base museformer_lm of the original

# Top-level tensors: original name -> this project's name (the decoder's prefix "decoder." is the same).
NAME_MAP = {
    "embed_regular_tokens.weight": "embed_tokens.weight",
    "embed_summary_tokens.weight": "embed_summary.weight",
    "reg_proj_embeddings.weight": "input_proj.weight",  # Linear over [tokEmb·√d | barSin | beatSin]
    "reg_proj_embeddings.bias": "input_proj.bias",
    "sum_proj_embeddings.weight": "summary_proj.weight",  # Linear over [sumEmb·√d | barSin]
    "sum_proj_embeddings.bias": "summary_proj.bias",
    "layer_norm.weight": "final_norm.weight",
    "layer_norm.bias": "final_norm.bias",
    "output_projection.weight": "output_projection.weight",
}
# Per-layer tensors ("layers.{i}." before both names).
LAYER_NAME_MAP = {
    "self_attn.reg_query_proj.weight": "self_attn.q_proj.weight",
    "self_attn.reg_key_proj.weight": "self_attn.k_proj.weight",
    "self_attn.reg_value_proj.weight": "self_attn.v_proj.weight",
    "self_attn.reg_out_proj.weight": "self_attn.out_proj.weight",
    "self_attn.reg_out_proj.bias": "self_attn.out_proj.bias",
    "self_attn.sum_key2_proj.weight": "self_attn.k2_proj.weight",
    "self_attn.sum_value2_proj.weight": "self_attn.v2_proj.weight",
    "reg_self_attn_layer_norm.weight": "attn_norm.weight",
    "reg_self_attn_layer_norm.bias": "attn_norm.bias",
    "reg_fc1.weight": "fc1.weight",
    "reg_fc1.bias": "fc1.bias",
    "reg_fc2.weight": "fc2.weight",
    "reg_fc2.bias": "fc2.bias",
    "reg_final_layer_norm.weight": "ffn_norm.weight",
    "reg_final_layer_norm.bias": "ffn_norm.bias",
}
# Per-layer (3, C) bias parameters stacked from the original's q, k, v bias vectors, in that order.
LAYER_BIAS_STACKS = {
    "self_attn.reg_qkv_bias": ("self_attn.reg_query_bias", "self_attn.reg_key_bias", "self_attn.reg_value_bias"),
    "self_attn.sum_qkv_bias": ("self_attn.sum_query_bias", "self_attn.sum_key_bias", "self_attn.sum_value_bias"),
}
# Per-layer summary-stream names that must be the same tensor as their regular-stream twin (shared modules).
LAYER_SHARED_TWINS = {
    "self_attn.sum_query_proj.weight": "self_attn.reg_query_proj.weight",
    "self_attn.sum_key_proj.weight": "self_attn.reg_key_proj.weight",
    "self_attn.sum_value_proj.weight": "self_attn.reg_value_proj.weight",
    "self_attn.sum_out_proj.weight": "self_attn.reg_out_proj.weight",
    "self_attn.sum_out_proj.bias": "self_attn.reg_out_proj.bias",
    "sum_self_attn_layer_norm.weight": "reg_self_attn_layer_norm.weight",
    "sum_self_attn_layer_norm.bias": "reg_self_attn_layer_norm.bias",
    "sum_fc1.weight": "reg_fc1.weight",
    "sum_fc1.bias": "reg_fc1.bias",
    "sum_fc2.weight": "reg_fc2.weight",
    "sum_fc2.bias": "reg_fc2.bias",
    "sum_final_layer_norm.weight": "reg_final_layer_norm.weight",
    "sum_final_layer_norm.bias": "reg_final_layer_norm.bias",
}

# Options of the original that this project implements only at one value: (option, required value, what it means).
# An option absent from a checkpoint is taken to have the original's default, which is the value listed here.
REQUIRED_OPTIONS: Tuple[Tuple[str, object, str], ...] = (
    ("attention_mode", "v2s1", "the v2s1 FC-Attention"),
    ("num_summary_tokens_each_chunk", 1, "one summary token per bar"),
    ("use_token_abs_pos", False, "no token position embedding"),
    ("use_token_in_chunk_abs_pos", False, "no in-bar position embedding"),
    ("use_bar_abs_pos", True, "the bar sinusoid"),
    ("use_beat_abs_pos", True, "the beat sinusoid"),
    ("concat_reg_embeddings", True, "concatenated regular embeddings"),
    ("proj_reg_embeddings", True, "a projection of the regular embeddings"),
    ("concat_sum_embeddings", True, "concatenated summary embeddings"),
    ("proj_sum_embeddings", True, "a projection of the summary embeddings"),
    ("share_self_attention_layer_norm", True, "one attention LayerNorm for both streams"),
    ("share_ffn", True, "one FFN for both streams"),
    ("share_final_layer_norm", True, "one FFN LayerNorm for both streams"),
    ("attn_share_query_proj", True, "one Wq for both streams"),
    ("attn_share_key_proj", True, "one Wk for both streams"),
    ("attn_share_value_proj", True, "one Wv for both streams"),
    ("attn_share_out_proj", True, "one Wo for both streams"),
    ("add_different_kqv_bias_for_sum_and_reg", True, "separate q/k/v biases per stream"),
    ("normalize_before", True, "pre-LayerNorm layers"),
    ("no_final_norm", False, "a final LayerNorm"),
    ("share_input_output_embed", False, "an output projection not tied to the input embedding"),
    ("no_scale_embedding", False, "token embeddings scaled by sqrt(d)"),
    ("layernorm_embedding", False, "no embedding LayerNorm"),
    ("activation_fn", "gelu", "GELU in the FFN"),
    ("con2con_self", "full", "each token sees its own bar"),
    ("con2con_causal", True, "causally within its bar"),
    ("con2sum_self", "none", "never its own bar's summary"),
    ("sum2con_self", "full", "a summary sees its own bar's tokens"),
    ("sum2sum_self", "full", "a summary sees itself"),
    ("pref2pref_mode", "lt", "the BOS sees itself"),
    ("con2pref_mode", "full", "every token sees the BOS"),
    ("sum2pref_mode", "none", "summaries do not see the BOS"),
    ("pref2sum_mode", "none", "the BOS sees no summary"),
    ("pref2con_mode", "none", "the BOS sees no token"),
    ("take_bos_as_bar", False, "the BOS is not a bar of its own"),
    ("chunking_scheme", "bar_aware", "bars as chunks"),
    ("eob_token", "b-1", "b-1 ends a bar"),
)
# Options that hold a nested-tuple range command which must select nothing (summaries see no other bar).
EMPTY_RANGE_OPTIONS = ("sum2con", "sum2sum")
# Options that change no result here, reported as not carried over.
NOT_CARRIED = {
    "block_size": "block size of the original's Triton kernels (speed only; this project's --block-size is its own)",
    "attention_impl": "the original's kernel choice (this project picks its backend with --attention-impl auto)",
    "max_bar_abs_pos": "size of the bar sinusoid table (computed for any bar id here)",
    "max_beat_abs_pos": "size of the beat sinusoid table (computed for any beat id here)",
}


class OriginalCheckpointError(ValueError):
    """A file that is not a usable checkpoint of the original Museformer; the message is one line."""


# ------------------------------------------------------------------------------------------------------ reading
def read_original(path: str) -> dict:
    """The checkpoint dict of ``path``, loaded with ``weights_only=True`` (tensors, containers and
    ``argparse.Namespace`` only); ``OriginalCheckpointError`` naming the cause otherwise."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OriginalCheckpointError(f"{path} not found") from None
    except IsADirectoryError:
        raise OriginalCheckpointError(f"{path} is a directory, not a checkpoint file") from None
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise OriginalCheckpointError(
                f"{path} holds objects an original Museformer checkpoint does not ({found.group(1)}); it is not "
                "unpickled (only tensors and argparse.Namespace are allowed)") from None
        raise OriginalCheckpointError(f"{path} is not a checkpoint (cannot unpickle it: "
                                      f"{str(err).splitlines()[0][:120]})") from None
    except Exception as err:  # torch raises many types for a damaged or foreign file (RuntimeError, EOFError, ...)
        first = str(err).splitlines()[0].split(". ")[0][:120] if str(err) else ""
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise OriginalCheckpointError(f"{path} is truncated or not a checkpoint ({reason})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise OriginalCheckpointError(f"{path} is not a fairseq checkpoint (no model state dict in it)")
    return state


def original_options(state: dict, path: str = "the checkpoint") -> Dict[str, object]:
    """The original's training options: fairseq 0.10's ``args`` Namespace, or a later fairseq's ``cfg`` (its
    ``model`` and ``task`` sections merged, ``_name`` becoming ``arch`` / ``task``)."""
    args = state.get("args")
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    cfg = state.get("cfg")
    if isinstance(cfg, dict):
        options: Dict[str, object] = {}
        for section, name_key in (("task", "task"), ("model", "arch")):
            part = cfg.get(section)
            part = vars(part) if isinstance(part, argparse.Namespace) else (part or {})
            options.update({k: v for k, v in part.items() if k != "_name"})
            if part.get("_name") is not None and name_key not in part:
                options[name_key] = part["_name"]
        return options
    raise OriginalCheckpointError(f"{path} has neither fairseq 'args' nor 'cfg': not a fairseq checkpoint")


# -------------------------------------------------------------------------------------------------- translation
@dataclass
class Translation:
    """This project's settings for an original checkpoint."""

    model: Dict[str, object]  # MuseformerModelConfig fields
    task: Dict[str, object]  # MuseformerLMConfig fields
    not_carried: List[str] = field(default_factory=list)  # what the original had that is not carried over


def _single(value, name: str):
    """The one value of a per-layer tuple option like ``num_attention_heads=(8,)``."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise OriginalCheckpointError(f"unsupported option of the original: {name}={value!r} (different values "
                                          "per layer are not implemented here)")
        return value[0]
    return value


def _range_text(value) -> Optional[str]:
    """An original range-command option as the text this project's --con2con / --con2sum parse."""
    return None if value is None else (value if isinstance(value, str) else repr(value))


def translate_options(options: Dict[str, object], path: str = "the checkpoint") -> Translation:
    """``Translation`` of the original's options; ``OriginalCheckpointError`` for another model or an option whose
    value this project does not implement (named with its value)."""
    from museformer_plugin.bar_layout import parse_range_command

    task, arch = options.get("task"), str(options.get("arch") or "")
    if task != ORIGINAL_TASK or not arch.startswith(ORIGINAL_ARCH_PREFIX):
        raise OriginalCheckpointError(
            f"{path} is a checkpoint of arch {arch or None!r} (task {task!r}), not of the original Museformer "
            f"(task {ORIGINAL_TASK}, arch museformer_lm_v2s1)")
    unsupported = [f"{name}={options[name]!r} (this project implements {meaning}: {name}={want!r})"
                   for name, want, meaning in REQUIRED_OPTIONS if name in options and options[name] != want]
    for name in EMPTY_RANGE_OPTIONS:
        if name in options and parse_range_command(_range_text(options[name])) is not None:
            unsupported.append(f"{name}={options[name]!r} (summaries see only their own bar here)")
    embed_dim = int(_single(options.get("attention_embed_dim"), "attention_embed_dim"))
    if int(options.get("token_embed_dim") or embed_dim) != embed_dim:
        unsupported.append(f"token_embed_dim={options['token_embed_dim']!r} (it must equal attention_embed_dim "
                           f"{embed_dim} here)")
    scheme = {name: _range_text(options.get(name)) for name in ("con2con", "con2sum")}
    for name, text in scheme.items():
        try:
            parse_range_command(text)
        except ValueError as err:  # per-layer / per-head schemes
            unsupported.append(f"{name}: {err}")
    if unsupported:
        raise OriginalCheckpointError(f"unsupported option of the original in {path}: {'; '.join(unsupported)}")

    model = {
        "decoder_layers": int(options["num_layers"]),
        "decoder_embed_dim": embed_dim,
        "decoder_ffn_embed_dim": int(_single(options["ffn_embed_dim"], "ffn_embed_dim")),
        "decoder_attention_heads": int(_single(options["num_attention_heads"], "num_attention_heads")),
        "bar_embed_dim": int(options.get("bar_abs_pos_embed_dim", 256)),
        "beat_embed_dim": int(options.get("beat_abs_pos_embed_dim", 128)),
        "dropout": float(options.get("dropout", 0.1)),
        "attention_dropout": float(options.get("attention_dropout", 0.1)),
        "con2con": scheme["con2con"],
        "con2sum": scheme["con2sum"],
    }
    task_cfg = {"beat_mask_ts": bool(options.get("beat_mask_ts", False))}
    for name in ("truncate_train", "truncate_valid", "truncate_test", "tokens_per_sample"):
        if options.get(name) is not None:
            task_cfg[name] = int(options[name])
    not_carried = [f"{name}={options[name]!r}: {why}" for name, why in NOT_CARRIED.items() if name in options]
    not_carried.append("optimizer and learning-rate state (a fine-tuning run starts a fresh optimizer)")
    return Translation(model, task_cfg, not_carried)


# ------------------------------------------------------------------------------------------------- state dicts
def map_state_dict(original: Dict[str, torch.Tensor], num_layers: int,
                   path: str = "the checkpoint") -> Dict[str, torch.Tensor]:
    """This project's ``museformer_lm`` state dict (names as ``model.state_dict()``, dtypes unchanged) from the
    original's; ``OriginalCheckpointError`` naming missing, unexpected or wrongly shared tensors."""
    expected: Dict[str, str] = {f"decoder.{o}": f"decoder.{n}" for o, n in NAME_MAP.items()}
    stacks: Dict[str, Tuple[str, ...]] = {}
    twins: Dict[str, str] = {}
    for i in range(num_layers):
        o, n = f"decoder.layers.{i}.", f"decoder.layers.{i}."
        expected.update({o + a: n + b for a, b in LAYER_NAME_MAP.items()})
        stacks.update({n + b: tuple(o + a for a in parts) for b, parts in LAYER_BIAS_STACKS.items()})
        twins.update({o + a: o + b for a, b in LAYER_SHARED_TWINS.items()})
    known = set(expected) | {name for parts in stacks.values() for name in parts} | set(twins)
    # fairseq bookkeeping entries that are not parameters of the model.
    ignorable = {k for k in original if k.endswith("._float_tensor") or k.endswith(".version") or k == "version"}
    missing = sorted(known - set(original))
    unexpected = sorted(set(original) - known - ignorable)
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_names(unexpected)}")
    if problems:
        raise OriginalCheckpointError(f"{path} does not hold the original's {num_layers}-layer Museformer: "
                                      + "; ".join(problems))
    not_shared = [s for s, r in twins.items() if not torch.equal(original[s], original[r])]
    if not_shared:
        raise OriginalCheckpointError(
            f"{path}: the summary stream has its own weights ({_names(sorted(not_shared))} differ from their regular "
            "twins); this project shares them between the streams")
    mapped = {ours: original[theirs] for theirs, ours in expected.items()}
    mapped.update({ours: torch.stack([original[p] for p in parts]) for ours, parts in stacks.items()})
    return mapped


def _names(names: List[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
