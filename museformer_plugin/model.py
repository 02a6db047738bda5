"""Museformer language model: embeddings, decoder layer, incremental decoder, ``museformer_lm`` model and archs.

Reads in build order (spec §2.2, §3): sinusoid → MuseformerDecoderLayer (pre-LN FC-Attention + FFN, shared by the
regular and the summary stream) → MuseformerDecoder → MuseformerLanguageModel → named sizes.

Batch-first throughout: fairseq hands ``prev_output_tokens`` as (B, T) and expects logits (B, T, V), so no transpose
is needed at the boundary.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from . import fairseq_required  # noqa: F401  (a clear message when fairseq is not installed)
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel, register_model, register_model_architecture
from omegaconf import II
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import IMPLS, FineCoarseAttention
from .bar_layout import (SCHEME_PRESETS, BarLayout, BarScheme, bar_index, build_beat_lut, compute_bar_ids,
                         compute_beat_ids, count_complete_bars)
from .incremental import forward_incremental, reorder

ATTENTION_IMPL_CHOICES = ChoiceEnum(list(IMPLS))
ATTENTION_SCHEME_CHOICES = ChoiceEnum(sorted(SCHEME_PRESETS))


@dataclass
class MuseformerModelConfig(FairseqDataclass):
    # Defaults = the paper's model (spec §4.1, arch museformer_lm): 4 layers, 512 hidden, 8 heads, FFN 2048.
    decoder_layers: int = field(default=4, metadata={"help": "number of Museformer decoder layers"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "hidden size d of both streams"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "inner size of the feed-forward block"})
    decoder_attention_heads: int = field(default=8, metadata={"help": "attention heads (head dim = d / heads)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on embeddings and on each residual branch"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on the attention probabilities"})
    bar_embed_dim: int = field(
        default=256, metadata={"help": "size of the sinusoidal bar-index embedding concatenated to the input (§3)"}
    )
    beat_embed_dim: int = field(
        default=128, metadata={"help": "size of the sinusoidal beat (onset) embedding concatenated to the input (§3)"}
    )
    attention_impl: ATTENTION_IMPL_CHOICES = field(
        default="auto",
        metadata={"help": "FC-Attention backend: 'auto' (sparse on CPU, flex on CUDA; sparse on CUDA while "
                  "training with attention dropout, which FlexAttention lacks), 'sparse' (bar-aligned block-sparse "
                  "gather; CPU and GPU), 'flex' (torch FlexAttention, compiled on CUDA; no attention dropout) or "
                  "'dense' (full boolean masks, O(T^2) memory; the reference). Same results, speed only"},
    )
    attention_scheme: ATTENTION_SCHEME_CHOICES = field(
        default="museformer",
        metadata={"help": "bar selection preset: 'museformer' (fine = previous 1,2,4,8,12,16,24,32 bars, coarse "
                  "summaries of all others), 'full' (plain causal attention), 'recent8' (fine = previous 8 bars), "
                  "'no-coarse' (museformer's fine bars, no summaries)"},
    )
    con2con: Optional[str] = field(
        default=None,
        metadata={"help": "fine-grained bars in the original's nested-tuple syntax, e.g. "
                  "'((((-2,0),-4,-8,-12,-16,-24,-32),),)'; overrides the preset's fine part"},
    )
    con2sum: Optional[str] = field(
        default=None,
        metadata={"help": "coarse-grained bars (seen through their summaries) in the original's nested-tuple "
                  "syntax, e.g. '((((None,-32),(-31,-24),(-23,-16),(-15,-12),(-11,-8),(-7,-4),-3),),)'; "
                  "'None' = no summaries; overrides the preset's coarse part"},
    )
    block_size: int = field(
        default=256, metadata={"help": "sparse attention: the longest query block in tokens; a block never spans "
                               "two bars, and a longer bar is cut into equal pieces (speed only, same results)"}
    )
    checkpoint_activations: bool = field(
        default=False,
        metadata={"help": "recompute each layer's activations in the backward pass instead of keeping them "
                  "(as fairseq's transformer_lm option): much less memory per token for long songs, about one "
                  "more forward pass of compute; same results"},
    )
    max_target_positions: Optional[int] = II("task.tokens_per_sample")


def sinusoid(ids: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """fairseq-style sinusoidal embedding of integer ``ids`` (...,) → (..., dim) in ``dtype``: [sin | cos], id ≤ 0
    → zeros.

    Same values as a table ``emb[i] = [sin(i·f), cos(i·f)]``, f_k = exp(-k·ln(10000)/(half-1)), with a zero row 0
    (the original's TaoEmbedding, spec §3); computed directly, so it never runs out of rows. The angles are
    computed in fp32 (bar ids reach the thousands) and only the result is cast to ``dtype`` (the parameters'
    dtype under --fp16 / --bf16, so that the concatenation with the token embedding keeps it).
    """
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float, device=ids.device) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = ids.clamp(min=0).float()[..., None] * freq  # (..., half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb.masked_fill((ids <= 0)[..., None], 0.0).to(dtype)


class MuseformerDecoderLayer(nn.Module):
    """Pre-LN layer applied to both streams (spec §2.2): x += Drop(FCAttn(LN1(x))); x += Drop(FFN(LN2(x))).

    LN1, LN2 and the FFN (Linear → GELU → Linear, no activation dropout) are shared by the two streams.
    """

    def __init__(self, cfg: MuseformerModelConfig):
        super().__init__()
        d = cfg.decoder_embed_dim
        self.attn_norm = nn.LayerNorm(d)
        self.self_attn = FineCoarseAttention(
            d, cfg.decoder_attention_heads, attention_dropout=cfg.attention_dropout,
            impl=cfg.attention_impl, block_size=cfg.block_size,
        )
        self.ffn_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.decoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_embed_dim, d)
        self.dropout = nn.Dropout(cfg.dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """x + Drop(FFN(LN2(x))), x (..., C) of either stream."""
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.ffn_norm(x)))))

    def residual(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The layer's wiring after attention: ffn(x + Drop(attn_out)), x and attn_out (..., C) of either stream
        (attn_out = FCAttn(LN1(x)), computed by the caller: here, or a token at a time by the cached decoder)."""
        return self.ffn(x + self.dropout(attn_out))

    def forward(self, x_reg: torch.Tensor, x_sum: torch.Tensor, layout: BarLayout, scheme: BarScheme,
                kv_sink=None):
        """x_reg (B, T, C), x_sum (B, S, C) → same shapes (residual stream of each). ``kv_sink``: see
        ``FineCoarseAttention.forward`` (the cached decoder's prefill)."""
        a_reg, a_sum = self.self_attn(self.attn_norm(x_reg), self.attn_norm(x_sum), layout, scheme, kv_sink)
        return self.residual(x_reg, a_reg), self.residual(x_sum, a_sum)


class BarBeatInput:
    """The regular-stream input both decoders share (spec §3): Drop(Linear(concat[tokEmb·√d, barSin(bar id),
    beatSin(beat id)])). ``init_bar_beat_input`` creates ``embed_tokens`` and ``input_proj`` (the parameter names
    saved checkpoints use) where the decoder's ``__init__`` calls it, so the random initialisation order is kept."""

    def init_bar_beat_input(self, cfg, dictionary) -> None:
        d = cfg.decoder_embed_dim
        self.bar_embed_dim, self.beat_embed_dim = cfg.bar_embed_dim, cfg.beat_embed_dim
        self.embed_scale = math.sqrt(d)
        # nn.Embedding keeps its default N(0, 1) init and a zero pad row, as in the original.
        self.embed_tokens = nn.Embedding(len(dictionary), d, padding_idx=dictionary.pad())
        self.input_proj = nn.Linear(d + cfg.bar_embed_dim + cfg.beat_embed_dim, d)
        self.dropout = nn.Dropout(cfg.dropout)

    def embed_regular(self, tokens: torch.Tensor, bar_ids: torch.Tensor, beat_ids: torch.Tensor) -> torch.Tensor:
        """Regular-stream input (spec §3), tokens / bar ids / beat ids (B, L) → (B, L, d):
        Drop(Linear(concat[tokEmb·√d, barSin(bar id), beatSin(beat id)])), in the parameters' dtype."""
        return self.embed_regular_from(tokens, self.embed_sinusoid(bar_ids, self.bar_embed_dim),
                                       self.embed_sinusoid(beat_ids, self.beat_embed_dim))

    def embed_sinusoid(self, ids: torch.Tensor, dim: int) -> torch.Tensor:
        """``sinusoid(ids, dim)`` (..., dim) in the parameters' dtype (bar ids: bar_embed_dim, beat ids:
        beat_embed_dim)."""
        return sinusoid(ids, dim, self.embed_tokens.weight.dtype)

    def embed_regular_from(self, tokens: torch.Tensor, bar_sin: torch.Tensor, beat_sin: torch.Tensor) -> torch.Tensor:
        """``embed_regular`` with the bar and beat sinusoids already computed (B, L, bar/beat dim), in the
        parameters' dtype: the cached decoder keeps them per id instead of recomputing them at every step."""
        emb = self.embed_tokens(tokens) * self.embed_scale
        return self.dropout(self.input_proj(torch.cat([emb, bar_sin, beat_sin], dim=-1)))  # (B, L, d)


class MuseformerDecoder(BarBeatInput, FairseqIncrementalDecoder):
    """Embeddings (spec §3) → layers → final LN → untied output projection. Summaries produce no output."""

    def __init__(self, cfg: MuseformerModelConfig, dictionary, bar_token: int, beat_mask_ts: bool = False):
        super().__init__(dictionary)
        d = cfg.decoder_embed_dim
        self.cfg = cfg
        self.embed_dim = d
        self.bar_token = bar_token
        self.pad = dictionary.pad()
        self.scheme = BarScheme.from_args(cfg.attention_scheme, cfg.con2con, cfg.con2sum)
        # Beat LUT over the task dictionary, for inputs that come without beat ids (inference). Not a parameter and
        # not saved: it is rebuilt from dict.txt and the task's --beat-mask-ts, so it always matches the dataset's.
        self.register_buffer(
            "beat_lut", build_beat_lut(dictionary.symbols, dictionary.nspecial, beat_mask_ts), persistent=False
        )

        # Regular stream input: concat[tokEmb·√d, barSin(bar id), beatSin(beat id)] → Linear → d (spec §3).
        self.init_bar_beat_input(cfg, dictionary)
        # Summary stream input: concat[sumEmb(1)·√d, barSin(bar index)] → its own Linear → d. Row 0 is padding;
        # with one summary token per bar (K = 1) every summary uses id 1.
        self.embed_summary = nn.Embedding(2, d, padding_idx=0)
        self.summary_proj = nn.Linear(d + cfg.bar_embed_dim, d)

        self.layers = nn.ModuleList([MuseformerDecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        self.final_norm = nn.LayerNorm(d)
        self.output_projection = nn.Linear(d, len(dictionary), bias=False)  # not tied to embed_tokens
        nn.init.normal_(self.output_projection.weight, mean=0.0, std=d ** -0.5)

    def layout_ids(self, src_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Bar ids and beat ids (B, T) of ``src_tokens`` (B, T) = [</s>] + tokens (right-padded).

        The same ``bar_layout`` functions the dataset uses, so training and inference see identical ids.
        """
        bar_ids, _ = compute_bar_ids(src_tokens, self.bar_token, self.pad)
        return bar_ids, compute_beat_ids(src_tokens, self.beat_lut)

    def build_layout(self, src_tokens: torch.Tensor, bar_ids: torch.Tensor) -> BarLayout:
        """BarLayout for a batch of ``src_tokens`` (B, T) whose bar ids (B, T) are given (by the dataset or
        ``layout_ids``).

        A sample whose BOS has bar id 1 (the dataset's ``--bos-in-first-bar``) is laid out as the original's
        training data path did (``attention/bos_in_first_bar.py``); the layout keeps bar id 0 for its BOS."""
        bos_in_first_bar = bar_ids[:, 0].eq(1) if bar_ids.size(1) else None
        if bos_in_first_bar is not None and bos_in_first_bar.any():
            bar_ids = torch.cat([bar_ids[:, :1].masked_fill(bos_in_first_bar[:, None], 0), bar_ids[:, 1:]], dim=1)
        else:
            bos_in_first_bar = None
        return BarLayout(bar_ids, count_complete_bars(src_tokens, bar_ids, self.bar_token), bos_in_first_bar)

    def forward(
        self,
        prev_output_tokens: torch.Tensor,
        encoder_out=None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[torch.Tensor]]]] = None,
        features_only: bool = False,
        src_lengths: Optional[torch.Tensor] = None,
        bar_ids: Optional[torch.Tensor] = None,
        beat_ids: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        """prev_output_tokens (B, T) = [</s>] + tokens, right-padded with pad.

        bar_ids / beat_ids (B, T): from the dataset (training, validation); derived from the tokens when None.
        A BOS with bar id 1 (``--bos-in-first-bar``) selects the original's training layout for that sample: the
        BOS is embedded as bar 1 and attends to all of bar 1, and bar 1's summary sees the BOS (spec §2.6).
        incremental_state: fairseq generation with a KV cache (``incremental.py``): ``prev_output_tokens`` holds the
        whole sequence so far and only the columns not seen by an earlier call are run; bar and beat ids of new
        tokens are derived from the tokens (``bar_ids``/``beat_ids`` are ignored).
        Returns (logits (B, T, V) — (B, Tnew, V) with incremental_state — , {"attn": [None], "inner_states": [...]}).
        """
        if incremental_state is not None:
            return forward_incremental(self, prev_output_tokens, incremental_state, features_only)
        x, extra = self.extract_features(prev_output_tokens, bar_ids=bar_ids, beat_ids=beat_ids)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                         bar_ids=None, beat_ids=None, kv_sink=None, **kwargs):
        """Final-LN features of the regular stream (B, T, C) and ``{"attn": [None], "inner_states": [...]}``.

        ``kv_sink``: a list that receives every layer's (k_reg, v_reg, k2, v2) (the cached decoder's prefill)."""
        src_tokens = prev_output_tokens
        B, T = src_tokens.shape
        if bar_ids is None or beat_ids is None:
            derived_bar, derived_beat = self.layout_ids(src_tokens)
            bar_ids = derived_bar if bar_ids is None else bar_ids
            beat_ids = derived_beat if beat_ids is None else beat_ids
        assert bar_ids.shape == (B, T) and beat_ids.shape == (B, T), (
            f"bar_ids {tuple(bar_ids.shape)} / beat_ids {tuple(beat_ids.shape)} must match tokens {(B, T)}")
        layout = self.build_layout(src_tokens, bar_ids)

        x_reg = self.embed_regular(src_tokens, bar_ids, beat_ids)  # (B, T, d)
        # Summary stream: slot j belongs to bar j + 1; slots past a sample's complete bars are masked by attention.
        S = layout.num_summary_slots
        slot_bar = torch.arange(1, S + 1, device=src_tokens.device).expand(B, S)  # (B, S)
        x_sum = self.embed_summaries(slot_bar)  # (B, S, d)

        inner_states = [x_reg]
        recompute = self.cfg.checkpoint_activations and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute and kv_sink is None:  # keeps only the layer's inputs; dropout masks are replayed
                x_reg, x_sum = checkpoint(layer, x_reg, x_sum, layout, self.scheme, use_reentrant=False)
            else:
                x_reg, x_sum = layer(x_reg, x_sum, layout, self.scheme, kv_sink)
            inner_states.append(x_reg)
        return self.final_norm(x_reg), {"attn": [None], "inner_states": inner_states}

    def embed_summaries(self, slot_bars: torch.Tensor) -> torch.Tensor:
        """Summary-stream input, bar ids of the summary slots (B, S) → (B, S, d):
        Drop(Linear(concat[sumEmb(1)·√d, barSin(bar)])). Every sample draws its own dropout mask."""
        emb = self.embed_summary(torch.ones_like(slot_bars)) * self.embed_scale  # K = 1: every summary uses id 1
        x = torch.cat([emb, sinusoid(slot_bars, self.bar_embed_dim, emb.dtype)], dim=-1)
        return self.dropout(self.summary_proj(x))

    def output_layer(self, features: torch.Tensor) -> torch.Tensor:
        return self.output_projection(features)  # (B, T, V)

    def max_positions(self) -> int:
        return self.cfg.max_target_positions or 100000

    def reorder_incremental_state(self, incremental_state, new_order):
        """Beam search / finished hypotheses: cached sample b becomes sample ``new_order[b]``."""
        reorder(self, incremental_state, new_order)


@register_model("museformer_lm", dataclass=MuseformerModelConfig)
class MuseformerLanguageModel(FairseqLanguageModel):
    """Museformer (Yu et al., NeurIPS 2022): FC-Attention over bars, one song per sample."""

    @classmethod
    def build_model(cls, cfg: MuseformerModelConfig, task):
        # beat_mask_ts comes from the task, not the model config: the dataset computes beat ids with the task's
        # flag, and a bool field defaulting to II("task.beat_mask_ts") is turned into True by fairseq's argparse
        # bridge (bool("${task.beat_mask_ts}")).
        dictionary = task.target_dictionary
        beat_mask_ts = bool(getattr(task.cfg, "beat_mask_ts", False))
        return cls(MuseformerDecoder(cfg, dictionary, bar_index(dictionary), beat_mask_ts))


# Named sizes. register_model already made the arch "museformer_lm" (= the dataclass defaults, the paper's model).
# Arch functions only fill in sizes the user did not give on the command line.
TINY_SIZES = (("decoder_layers", 2), ("decoder_embed_dim", 64), ("decoder_ffn_embed_dim", 128),
              ("decoder_attention_heads", 4))  # smoke tests and CPU demos (museformer_lm_tiny, museformer_linear_lm_tiny)


def fill_sizes(cfg, sizes) -> None:
    """Set each (name, value) of ``sizes`` on ``cfg`` where the user gave none (an arch never overrides a flag)."""
    for name, value in sizes:
        if getattr(cfg, name, None) is None:
            setattr(cfg, name, value)


@register_model_architecture("museformer_lm", "museformer_lm_base")
def museformer_lm_base(cfg):
    """The paper's size (spec §4.1), same as --arch museformer_lm."""
    fill_sizes(cfg, (("decoder_layers", 4), ("decoder_embed_dim", 512), ("decoder_ffn_embed_dim", 2048),
                     ("decoder_attention_heads", 8)))


@register_model_architecture("museformer_lm", "museformer_lm_tiny")
def museformer_lm_tiny(cfg):
    """For smoke tests and CPU demos: 2 layers, 64 hidden, 4 heads, FFN 128."""
    fill_sizes(cfg, TINY_SIZES)
