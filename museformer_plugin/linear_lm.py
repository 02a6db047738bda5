"""Linear Transformer baseline (Katharopoulos et al., ICML 2020): the paper's "Linear Transformer" row of Table 1.

Same task, data and size conventions as ``museformer_lm`` (spec §4.1, §6.3): the same input embedding idea (token
embedding ·√d ‖ bar sinusoid ‖ beat sinusoid → Linear, spec §3, with bar/beat ids from ``bar_layout``), pre-LN
layers with GELU FFN, final LN and an untied output projection. Only the token mixing differs: causal linear
attention with the feature map φ(x) = elu(x) + 1, computed with causal prefix sums in chunks, O(T·C·D + T·D²).

    fairseq-train DATA --user-dir museformer_plugin --task museformer_lm --arch museformer_linear_lm_tiny ...

Reads in build order: causal_linear_attention (the maths) → LinearAttention → LinearDecoderLayer →
LinearDecoder → MuseformerLinearLM → named sizes.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from . import fairseq_required  # noqa: F401  (a clear message when fairseq is not installed)
from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqDecoder, FairseqLanguageModel, register_model, register_model_architecture
from omegaconf import II
from torch import nn

from .bar_layout import bar_index, build_beat_lut, compute_bar_ids, compute_beat_ids
from .model import TINY_SIZES, BarBeatInput, fill_sizes


@dataclass
class MuseformerLinearLMConfig(FairseqDataclass):
    # Defaults = the Museformer paper's model size (spec §4.1), so the baseline is compared at equal size.
    decoder_layers: int = field(default=4, metadata={"help": "number of decoder layers"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "hidden size d"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "inner size of the feed-forward block"})
    decoder_attention_heads: int = field(default=8, metadata={"help": "attention heads (head dim = d / heads)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on embeddings and on each residual branch"})
    bar_embed_dim: int = field(
        default=256, metadata={"help": "size of the sinusoidal bar-index embedding concatenated to the input"}
    )
    beat_embed_dim: int = field(
        default=128, metadata={"help": "size of the sinusoidal beat (onset) embedding concatenated to the input"}
    )
    linear_chunk_size: int = field(
        default=64,
        metadata={"help": "tokens per chunk of the causal prefix-sum computation (memory/speed trade-off only; "
                  "the result does not depend on it)"},
    )
    linear_eps: float = field(
        default=1e-6, metadata={"help": "added to the linear-attention normaliser φ(q)·Σφ(k) to avoid 0/0"}
    )
    max_target_positions: Optional[int] = II("task.tokens_per_sample")


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020, eq. 7)."""
    return F.elu(x) + 1.0


def causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int = 64,
                            eps: float = 1e-6) -> torch.Tensor:
    """Causal linear attention of feature-mapped queries/keys: out_i = Σ_{j≤i} (q_i·k_j) v_j / (Σ_{j≤i} q_i·k_j + eps).

    q, k: (B, H, T, D), already passed through a positive feature map; v: (B, H, T, E). Returns (B, H, T, E).
    Computed chunk by chunk: within a chunk of C tokens an explicit lower-triangular (C, C) product, across chunks
    the exclusive prefix sums S_n = Σ_{chunks < n} kᵀv (D, E) and z_n = Σ_{chunks < n} k (D). Runs in float32 (the
    prefix sums grow with T and would lose precision or overflow in fp16).
    """
    B, H, T, D = q.shape
    E = v.size(-1)
    assert k.shape == (B, H, T, D) and v.shape[:3] == (B, H, T), (
        f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share (B, H, T) and q/k must match")
    out_dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    C = max(1, min(chunk_size, T))
    N = math.ceil(T / C)
    pad = N * C - T
    if pad:  # zero keys/values add nothing to the sums; the padded query rows are cut off below
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q = q.view(B, H, N, C, D)
    k = k.view(B, H, N, C, D)
    v = v.view(B, H, N, C, E)

    # Across chunks: state before chunk n (exclusive prefix sums over chunks).
    kv = torch.einsum("bhncd,bhnce->bhnde", k, v)  # (B, H, N, D, E)
    kv_prev = torch.cat([torch.zeros_like(kv[:, :, :1]), kv.cumsum(dim=2)[:, :, :-1]], dim=2)
    k_sum = k.sum(dim=3)  # (B, H, N, D)
    k_prev = torch.cat([torch.zeros_like(k_sum[:, :, :1]), k_sum.cumsum(dim=2)[:, :, :-1]], dim=2)
    num = torch.einsum("bhncd,bhnde->bhnce", q, kv_prev)  # (B, H, N, C, E)
    den = torch.einsum("bhncd,bhnd->bhnc", q, k_prev)  # (B, H, N, C)

    # Within a chunk: causal (C, C) scores, key j ≤ query i.
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = torch.einsum("bhncd,bhnmd->bhncm", q, k).masked_fill(~causal, 0.0)  # (B, H, N, C, C)
    num = num + scores @ v
    den = den + scores.sum(dim=-1)

    out = num / (den.unsqueeze(-1) + eps)  # (B, H, N, C, E)
    return out.reshape(B, H, N * C, E)[:, :, :T].to(out_dtype)


class LinearAttention(nn.Module):
    """Multi-head causal linear self-attention: projections → φ → ``causal_linear_attention`` → output projection."""

    def __init__(self, embed_dim: int, num_heads: int, chunk_size: int = 64, eps: float = 1e-6):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"decoder_embed_dim {embed_dim} must be divisible by decoder_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.chunk_size = chunk_size
        self.eps = eps
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); key_valid bool (B, T), True = a real token (padding keys are zeroed). Returns (B, T, C)."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = elu_feature_map(k) * key_valid[:, None, :, None].to(k.dtype)
        out = causal_linear_attention(elu_feature_map(q), k, v, self.chunk_size, self.eps)  # (B, H, T, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, C))


class LinearDecoderLayer(nn.Module):
    """Pre-LN layer: x += Drop(LinearAttn(LN1(x))); x += Drop(FFN(LN2(x))), FFN = Linear → GELU → Linear."""

    def __init__(self, cfg: MuseformerLinearLMConfig):
        super().__init__()
        d = cfg.decoder_embed_dim
        self.attn_norm = nn.LayerNorm(d)
        self.self_attn = LinearAttention(d, cfg.decoder_attention_heads, cfg.linear_chunk_size, cfg.linear_eps)
        self.ffn_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.decoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_embed_dim, d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) → (B, T, C)."""
        x = x + self.dropout(self.self_attn(self.attn_norm(x), key_valid))
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.ffn_norm(x)))))


class LinearDecoder(BarBeatInput, FairseqDecoder):
    """Embeddings (token ‖ bar ‖ beat, as museformer_lm) → linear-attention layers → final LN → output projection.

    A plain FairseqDecoder: fairseq's generator re-runs it over the whole prefix at each step (correct, not fast).
    """

    def __init__(self, cfg: MuseformerLinearLMConfig, dictionary, bar_token: int, beat_mask_ts: bool = False):
        super().__init__(dictionary)
        d = cfg.decoder_embed_dim
        self.cfg = cfg
        self.bar_token = bar_token
        self.pad = dictionary.pad()
        # Beat ids for inputs that come without them (inference), with the task's rule; rebuilt from dict.txt.
        self.register_buffer(
            "beat_lut", build_beat_lut(dictionary.symbols, dictionary.nspecial, beat_mask_ts), persistent=False
        )
        self.init_bar_beat_input(cfg, dictionary)  # the same input embedding as museformer_lm
        self.layers = nn.ModuleList([LinearDecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        self.final_norm = nn.LayerNorm(d)
        self.output_projection = nn.Linear(d, len(dictionary), bias=False)  # not tied, as museformer_lm
        nn.init.normal_(self.output_projection.weight, mean=0.0, std=d ** -0.5)

    def forward(self, prev_output_tokens: torch.Tensor, encoder_out=None, incremental_state=None,
                features_only: bool = False, src_lengths=None, bar_ids=None, beat_ids=None, **kwargs):
        """prev_output_tokens (B, T) = [</s>] + tokens, right-padded. bar_ids / beat_ids (B, T) from the dataset,
        derived from the tokens with ``bar_layout`` when None. Returns (logits (B, T, V), {"attn": [None]})."""
        x = self.extract_features(prev_output_tokens, bar_ids=bar_ids, beat_ids=beat_ids)
        if not features_only:
            x = self.output_layer(x)
        return x, {"attn": [None], "inner_states": None}

    def extract_features(self, prev_output_tokens, encoder_out=None, bar_ids=None, beat_ids=None, **kwargs):
        """Final-LN features (B, T, C)."""
        src_tokens = prev_output_tokens
        B, T = src_tokens.shape
        if bar_ids is None:
            bar_ids, _ = compute_bar_ids(src_tokens, self.bar_token, self.pad)
        if beat_ids is None:
            beat_ids = compute_beat_ids(src_tokens, self.beat_lut)
        assert bar_ids.shape == (B, T) and beat_ids.shape == (B, T), (
            f"bar_ids {tuple(bar_ids.shape)} / beat_ids {tuple(beat_ids.shape)} must match tokens {(B, T)}")
        x = self.embed_regular(src_tokens, bar_ids, beat_ids)  # (B, T, d), in the parameters' dtype
        key_valid = src_tokens.ne(self.pad)  # (B, T)
        for layer in self.layers:
            x = layer(x, key_valid)
        return self.final_norm(x)

    def output_layer(self, features: torch.Tensor) -> torch.Tensor:
        return self.output_projection(features)  # (B, T, V)

    def max_positions(self) -> int:
        return self.cfg.max_target_positions or 100000


@register_model("museformer_linear_lm", dataclass=MuseformerLinearLMConfig)
class MuseformerLinearLM(FairseqLanguageModel):
    """Linear Transformer language model (elu+1 causal linear attention) on Museformer's task and embeddings."""

    @classmethod
    def build_model(cls, cfg: MuseformerLinearLMConfig, task):
        # The beat-id rule comes from the task (--beat-mask-ts), as in museformer_lm, so derived ids match the data's.
        dictionary = task.target_dictionary
        beat_mask_ts = bool(getattr(task.cfg, "beat_mask_ts", False))
        return cls(LinearDecoder(cfg, dictionary, bar_index(dictionary), beat_mask_ts))


# register_model already made the arch "museformer_linear_lm" (= the dataclass defaults, the paper's size).
# Arch functions only fill in sizes the user did not give on the command line (model.fill_sizes).


@register_model_architecture("museformer_linear_lm", "museformer_linear_lm_tiny")
def museformer_linear_lm_tiny(cfg):
    """Same sizes as museformer_lm_tiny: 2 layers, 64 hidden, 4 heads, FFN 128."""
    fill_sizes(cfg, TINY_SIZES)
