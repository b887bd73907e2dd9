"""ALMT: Adaptive Language-guided Multimodal Transformer (Zhang et al., EMNLP 2023).

Follows the official implementation (Haoyu-ha/ALMT, ``configs/mosi.yaml``), written anew:

1. **Projection with learned tokens.** Each modality: ``Linear(D_m -> d)``, then ``T`` learned
   tokens (zero-initialised) are put in front, learned positions (standard-normal initialised,
   one per token and input step) added, one pre-norm Transformer layer, and only the ``T`` token
   outputs are kept: ``H_m^0`` ``(B, T, d)``. Text enters as the language model's hidden states.
2. **Language encoder.** ``H_t^0`` (+ learned positions) through ``hyper_layers - 1`` pre-norm
   Transformer layers, keeping every level: ``[H_t^0, H_t^1, ..., H_t^{N-1}]``.
3. **Adaptive hyper-modality learning (AHL).** A hyper-modality ``H_hyper`` ``(B, T, d)`` starts
   from a learned all-ones parameter. Layer ``i`` layer-normalises ``H_t^i``, ``H_a``, ``H_v``
   and ``H_hyper`` (one LayerNorm each) and adds, to the normalised ``H_hyper``, a projection of
   the sum of two attentions whose **queries come from the language level** ``H_t^i`` and whose
   keys/values come from audio and from vision respectively (the official layer's residual is on
   the normalised hyper-modality, kept here)::

       H_hyper <- LN(H_hyper) + W_o[softmax(Q_t K_a^T/√d_h) V_a + softmax(Q_t K_v^T/√d_h) V_v]

4. **Cross-modality fusion.** A shared learned token is put in front of ``H_hyper`` (source) and
   of ``H_t^{N-1}`` (target), each gets its own learned positions; ``fusion_layers`` pre-norm
   cross-attention layers (target queries, source keys/values, then a feed-forward), and the
   target's first token goes through ``Linear(d, 1)``.

Attention layers are the official ViT style: separate LayerNorms for query, key and value
inputs, bias-free q/k/v projections of ``heads x head_size``, an output Linear (skipped only when
one head already has width ``d``), GELU feed-forward. Loss: MSE (``task``).

Deviation: the official code feeds fixed-length padded sequences and attends to the padding;
here padded steps are masked out of the projection layers' keys (``mask_padding=false`` restores
the official behaviour). Sequences longer than ``max_*_length`` are refused (the learned position
tables have that many rows).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from msakit.config_schema import ModelConfig
from msakit.models import register_model
from msakit.models.base import FeatureDims, ModelOutput, MSAModel, require_modalities
from msakit.modules.dropout import Dropout
from msakit.modules.text import PretrainedTextEncoder


class ALMTConfig(ModelConfig):
    """ALMT hyper-parameters; defaults are the official MOSI ones (Haoyu-ha/ALMT,
    ``configs/mosi.yaml``; the official name of each field is in its description)."""

    name: str = "almt"
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})
    hidden_size: int = Field(128, ge=1, description="token_dim (= proj_input_dim = "
                             "*_proj_dst_dim): width of every token")
    token_length: int = Field(8, ge=1, description="token_len: learned tokens per modality")
    projection_depth: int = Field(1, ge=1, description="proj_depth")
    projection_heads: int = Field(8, ge=1, description="proj_heads")
    projection_mlp_size: int = Field(128, ge=1, description="proj_mlp_dim")
    attention_head_size: int = Field(64, ge=1, description="dim_head: head width outside AHL "
                                     "(projection, text encoder, fusion)")
    text_encoder_heads: int = Field(8, ge=1, description="l_enc_heads")
    text_encoder_mlp_size: int = Field(128, ge=1)
    hyper_layers: int = Field(3, ge=1, description="AHL_depth; the language encoder has one "
                              "less")
    hyper_heads: int = Field(8, ge=1, description="ahl_heads")
    hyper_head_size: int = Field(16, ge=1, description="ahl_dim_head")
    fusion_layers: int = Field(2, ge=1, description="fusion_layer_depth")
    fusion_heads: int = Field(8, ge=1)
    fusion_mlp_size: int = Field(128, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_text_length: int = Field(64, ge=1, description="rows of the text position table")
    max_audio_length: int = Field(375, ge=1)
    max_vision_length: int = Field(500, ge=1)
    mask_padding: bool = Field(True, description="mask padded steps (official: attends to them)")
    freeze_language_model: bool = False


class MultiHeadAttention(nn.Module):
    """ViT-style attention with pre-norm on each of query, key and value inputs.

    Shapes: ``query (B, Lq, d)``, ``key_value (B, Lk, d)``, ``key_padding (B, Lk)`` bool
    (True = ignore) or None -> ``(B, Lq, d)`` (the residual is added by the caller).
    """

    def __init__(self, dim: int, heads: int, head_size: int, dropout: float):
        super().__init__()
        inner = heads * head_size
        self.heads = heads
        self.norm_query = nn.LayerNorm(dim)
        self.norm_key = nn.LayerNorm(dim)
        self.norm_value = nn.LayerNorm(dim)
        self.to_query = nn.Linear(dim, inner, bias=False)
        self.to_key = nn.Linear(dim, inner, bias=False)
        self.to_value = nn.Linear(dim, inner, bias=False)
        self.dropout = dropout
        if heads == 1 and head_size == dim:
            self.to_out: nn.Module = nn.Identity()
        else:
            self.to_out = nn.Sequential(nn.Linear(inner, dim), Dropout(dropout))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, -1).transpose(1, 2)  # (B, h, L, d_h)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self._split(self.to_query(self.norm_query(query)))
        k = self._split(self.to_key(self.norm_key(key)))
        v = self._split(self.to_value(self.norm_value(value)))
        mask = None if key_padding is None else (~key_padding)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # softmax(QKᵀ/√d_h)V
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Pre-norm ``Linear -> GELU -> Dropout -> Linear -> Dropout``; ``(..., d) -> (..., d)``."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout),
            nn.Linear(hidden, dim), Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerLayer(nn.Module):
    """Pre-norm layer: ``x += Attn(x, src, src)``; ``x += FF(x)`` (``src = x`` for self-attention)."""

    def __init__(self, dim: int, heads: int, head_size: int, mlp_size: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads, head_size, dropout)
        self.feed_forward = FeedForward(dim, mlp_size, dropout)

    def forward(
        self,
        x: torch.Tensor,
        source: torch.Tensor | None = None,
        key_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        source = x if source is None else source
        x = x + self.attention(x, source, source, key_padding)
        return x + self.feed_forward(x)


class TokenProjector(nn.Module):
    """Step 1: ``(B, L, D_m)`` -> ``(B, T, d)`` learned-token outputs of a Transformer."""

    def __init__(self, input_size: int, max_length: int, what: str, config: ALMTConfig):
        super().__init__()
        d, tokens = config.hidden_size, config.token_length
        self.what = what
        self.max_length = max_length
        self.project = nn.Linear(input_size, d)
        self.tokens = nn.Parameter(torch.zeros(1, tokens, d))
        self.positions = nn.Parameter(torch.randn(1, max_length + tokens, d))
        self.layers = nn.ModuleList(
            TransformerLayer(d, config.projection_heads, config.attention_head_size,
                             config.projection_mlp_size, config.dropout)
            for _ in range(config.projection_depth)
        )

    def forward(self, sequence: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = sequence.shape
        if length > self.max_length:
            raise ValueError(
                f"ALMT: {self.what} sequence has {length} steps but the learned position table "
                f"holds {self.max_length}; raise model.max_{self.what}_length"
            )
        tokens = self.tokens.expand(batch, -1, -1)
        x = torch.cat([tokens, self.project(sequence)], dim=1)
        x = x + self.positions[:, : x.shape[1]]
        key_padding = None
        if mask is not None:
            real = torch.cat([mask.new_ones(batch, tokens.shape[1]), mask.bool()], dim=1)
            key_padding = ~real
        for layer in self.layers:
            x = layer(x, key_padding=key_padding)
        return x[:, : tokens.shape[1]]


class HyperModalityLayer(nn.Module):
    """Step 3, one AHL layer. Shapes: all ``(B, T, d)`` -> ``(B, T, d)``."""

    def __init__(self, config: ALMTConfig):
        super().__init__()
        d, heads, head_size = config.hidden_size, config.hyper_heads, config.hyper_head_size
        inner = heads * head_size
        self.heads = heads
        self.norm_text = nn.LayerNorm(d)
        self.norm_audio = nn.LayerNorm(d)
        self.norm_vision = nn.LayerNorm(d)
        self.norm_hyper = nn.LayerNorm(d)
        self.to_query = nn.Linear(d, inner, bias=False)
        self.to_key_audio = nn.Linear(d, inner, bias=False)
        self.to_key_vision = nn.Linear(d, inner, bias=False)
        self.to_value_audio = nn.Linear(d, inner, bias=False)
        self.to_value_vision = nn.Linear(d, inner, bias=False)
        if heads == 1 and head_size == d:
            self.to_out: nn.Module = nn.Identity()
        else:
            self.to_out = nn.Sequential(nn.Linear(inner, d), Dropout(config.dropout))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, -1).transpose(1, 2)

    def forward(self, text, audio, vision, hyper) -> torch.Tensor:
        text, audio = self.norm_text(text), self.norm_audio(audio)
        vision, hyper = self.norm_vision(vision), self.norm_hyper(hyper)
        q = self._split(self.to_query(text))
        from_audio = F.scaled_dot_product_attention(
            q, self._split(self.to_key_audio(audio)), self._split(self.to_value_audio(audio))
        )
        from_vision = F.scaled_dot_product_attention(
            q, self._split(self.to_key_vision(vision)), self._split(self.to_value_vision(vision))
        )
        shift = (from_audio + from_vision).transpose(1, 2).reshape(hyper.shape[0], hyper.shape[1], -1)
        return hyper + self.to_out(shift)


@register_model
class ALMT(MSAModel):
    """ALMT (see the module docstring). Needs text, audio and vision."""

    name = "almt"
    paper = "Zhang et al., Learning Language-guided Adaptive Hyper-modality Representation " \
            "for Multimodal Sentiment Analysis, EMNLP 2023"
    config_class = ALMTConfig

    def __init__(self, config: ALMTConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "ALMT")
        d, tokens = config.hidden_size, config.token_length
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model
        )
        self.project_text = TokenProjector(
            self.text_encoder.hidden_size, config.max_text_length, "text", config)
        self.project_audio = TokenProjector(dims.audio, config.max_audio_length, "audio", config)
        self.project_vision = TokenProjector(
            dims.vision, config.max_vision_length, "vision", config)
        self.language_positions = nn.Parameter(torch.randn(1, tokens, d))
        self.language_layers = nn.ModuleList(
            TransformerLayer(d, config.text_encoder_heads, config.attention_head_size,
                             config.text_encoder_mlp_size, config.dropout)
            for _ in range(config.hyper_layers - 1)
        )
        self.hyper_init = nn.Parameter(torch.ones(1, tokens, d))
        self.hyper_layers = nn.ModuleList(
            HyperModalityLayer(config) for _ in range(config.hyper_layers)
        )
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, d))
        self.fusion_source_positions = nn.Parameter(torch.randn(1, tokens + 1, d))
        self.fusion_target_positions = nn.Parameter(torch.randn(1, tokens + 1, d))
        self.fusion_layers = nn.ModuleList(
            TransformerLayer(d, config.fusion_heads, config.attention_head_size,
                             config.fusion_mlp_size, config.dropout)
            for _ in range(config.fusion_layers)
        )
        self.regression = nn.Linear(d, 1)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        masked = self.config.mask_padding
        attention_mask = batch["attention_mask"]
        text_states = self.text_encoder.encode_batch(batch)  # (B, L_t, H)
        text = self.project_text(text_states, attention_mask.bool() if masked else None)
        audio = self.project_audio(batch["audio"], batch["audio_mask"] if masked else None)
        vision = self.project_vision(batch["vision"], batch["vision_mask"] if masked else None)

        levels = [text + self.language_positions]  # H_t^0 .. H_t^{N-1}, each (B, T, d)
        for layer in self.language_layers:
            levels.append(layer(levels[-1]))

        hyper = self.hyper_init.expand(text.shape[0], -1, -1)
        for level, layer in zip(levels, self.hyper_layers):
            hyper = layer(level, audio, vision, hyper)

        token = self.fusion_token.expand(text.shape[0], -1, -1)
        source = torch.cat([token, hyper], dim=1) + self.fusion_source_positions
        target = torch.cat([token, levels[-1]], dim=1) + self.fusion_target_positions
        for layer in self.fusion_layers:
            target = layer(target, source)
        prediction = self.regression(target[:, 0]).squeeze(-1)  # (B,)

        losses = {}
        if "labels" in batch:
            losses["task"] = F.mse_loss(prediction, batch["labels"].to(prediction.dtype))
        return ModelOutput(prediction=prediction, losses=losses,
                           extras={"hyper_modality": hyper.detach()})
