"""Probe: closed-form ridge regression on frozen pooled features, the floor every paper should beat.

No network is trained. Each clip becomes one fixed feature vector, and a ridge regression from
it to the sentiment label is solved in closed form on the training part of a partition:

=================  ==============================================================  ==========
block              computation                                                     output
=================  ==============================================================  ==========
text               frozen LM, masked mean (or [CLS]) of the last hidden states,
                   L2-normalised (``text_normalize``)                               ``(B, H)``
audio / vision     mean and std over the clip's real time steps                     ``(B, 2D)``
standardise        ``z = (x - mu) / sigma``, mu and sigma of the training part      ``(B, F)``
ridge              ``z @ w + b``                                                    ``(B,)``
=================  ==============================================================  ==========

For a penalty ``alpha`` the ridge solution on the standardised training features ``Z (N, F)``
and labels ``y (N,)`` is ``b = mean(y)`` and
``w = argmin ||y - b - Z w||^2 + alpha ||w||^2 = V diag(s / (s^2 + alpha)) U^T (y - b)`` with
``Z = U diag(s) V^T`` (one SVD, ``torch.linalg.svd``, serves the whole grid); this is
scikit-learn's ``Ridge(alpha)`` on ``StandardScaler`` features. ``alpha`` is the grid value
(``model.alphas``) with the lowest mean absolute error on the partition's validation part; the
test part is never read by the fit. ``sigma`` is the population standard deviation; a feature
that is constant on the training part keeps ``sigma = 1`` (as ``StandardScaler`` does).

The text block is scaled as a whole by default (``text_scaling=block``: ``mu`` per feature, one
``sigma`` for all ``H`` features, the root of their mean variance): the ridge penalty then treats
the embedding as the LM's authors shaped it, while the block still weighs as much as ``H``
standardised features beside audio and vision. ``text_scaling=feature`` standardises each
dimension. On the 229 mosi-demo clips (3 folds) block scaling and L2 normalisation had the lower
validation MAE, text-only and tri-modal (docs/models.md).

Audio and vision statistics use the real steps only (padding does not change them). On
word-aligned data they are taken over the clip's words (``word_audio``/``word_vision``, one step
per word), not over the sub-word expansion, which would weight long words more and count the
special tokens' zero rows.

Training is the trainer's closed-form path (:attr:`MSAModel.fits_in_closed_form`): one
"epoch" that collects the features of the training and validation batches, solves, and is then
scored on validation like any epoch. The fitted ``mu``, ``sigma``, ``w``, ``b`` and ``alpha`` are
buffers, so checkpoints, ``msakit export`` and ``from_pretrained`` treat them as weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from msakit.config_schema import ModelConfig
from msakit.models import register_model
from msakit.models.base import FeatureDims, ModelOutput, MSAModel, ordered_modalities
from msakit.modules.encoders import masked_time_mean
from msakit.modules.text import PretrainedTextEncoder

Modality = Literal["text", "audio", "vision"]
#: ``10^-1 ... 10^5`` in half decades.
DEFAULT_ALPHAS = tuple(float(10 ** (k / 2)) for k in range(-2, 11))


class ProbeConfig(ModelConfig):
    """The probe's settings: which pooled features, and the ridge penalties to choose from."""

    name: str = "probe"
    modalities: list[Modality] = Field(
        default_factory=lambda: ["text", "audio", "vision"],
        description="modalities whose pooled features are concatenated, e.g. [text]",
    )
    text_pooling: Literal["mean", "cls"] = Field(
        "mean", description="LM hidden states -> one vector: masked mean over the real tokens "
        "(what the packaged sentence-transformers MiniLM was trained with) or the first token")
    text_normalize: bool = Field(
        True, description="L2-normalise the pooled text vector, as the sentence-transformers "
        "pipeline of all-MiniLM-L6-v2 does (its last module is Normalize)")
    text_scaling: Literal["block", "feature"] = Field(
        "block", description="how the text block is standardised on the training part: "
        "'block' centres every feature and divides the whole block by one number (the root of "
        "its features' mean variance), keeping the LM's geometry; 'feature' divides each "
        "feature by its own std (StandardScaler). Audio and vision features, in unrelated "
        "units, are always standardised per feature")
    alphas: list[float] = Field(
        default_factory=lambda: list(DEFAULT_ALPHAS),
        description="ridge penalties to choose from on each partition's validation part "
        "(scikit-learn's Ridge alpha, on standardised features)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @field_validator("modalities")
    @classmethod
    def _unique_nonempty(cls, value: list[str]) -> list[str]:
        return ordered_modalities(value)

    @field_validator("alphas")
    @classmethod
    def _positive_alphas(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("model.alphas must give at least one ridge penalty")
        bad = [a for a in value if not (a > 0 and a < float("inf"))]
        if bad:
            raise ValueError(f"model.alphas must be finite and > 0, got {bad}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _check_weights(self) -> ProbeConfig:
        if set(self.loss_weights) != {"task"}:
            raise ValueError(
                f"model.loss_weights must give exactly ['task'], got {sorted(self.loss_weights)}"
            )
        return self


def masked_time_mean_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and population std over the real steps, concatenated.

    Args:
        x: ``(B, L, D)`` sequences (padding may hold anything).
        mask: ``(B, L)`` bool, True for real steps.

    Returns:
        ``(B, 2D)``: ``[mean, std]``; a clip with one real step has std 0.
    """
    real = mask.bool().unsqueeze(-1)
    x = torch.where(real, x, 0.0)  # padding may hold anything, even NaN
    mean = masked_time_mean(x, mask)  # (B, D)
    variance = masked_time_mean(torch.where(real, x - mean.unsqueeze(1), 0.0).square(), mask)
    return torch.cat([mean, variance.clamp_min(0).sqrt()], dim=-1)


def standardisation(features: torch.Tensor, block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift and scale ``(F,)`` that standardise ``features (N, F)``.

    The shift is every feature's mean. The scale is its population std (a constant feature
    keeps 1), except for the first ``block`` features, which share one scale: the root of their
    mean variance (so the block's mean variance becomes 1 and its geometry is kept).
    """
    mean = features.mean(0)
    std = features.std(0, correction=0)
    constant = std <= 1e-12 * mean.abs().clamp_min(1.0)
    scale = torch.where(constant, torch.ones_like(std), std)
    if block:
        shared = std[:block].square().mean().sqrt()
        scale[:block] = shared if shared > 1e-12 else 1.0
    return mean, scale


def ridge_path(z: torch.Tensor, y: torch.Tensor, alphas: Iterable[float]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge solutions for every penalty, from one SVD (see the module docstring).

    Args:
        z: ``(N, F)`` centred (standardised) features.
        y: ``(N,)`` labels.
        alphas: ``A`` penalties.

    Returns:
        ``coefficients (A, F)`` and ``intercept ()`` (``mean(y)``, the same for every penalty).
    """
    intercept = y.mean()
    u, s, vh = torch.linalg.svd(z, full_matrices=False)  # z = u diag(s) vh
    projected = u.T @ (y - intercept)  # (K,)
    alpha = torch.as_tensor(list(alphas), dtype=z.dtype, device=z.device)
    shrink = s / (s.square() + alpha[:, None])  # (A, K)
    return (shrink * projected) @ vh, intercept


@register_model
class Probe(MSAModel):
    """Closed-form ridge regression on frozen pooled features (see the module docstring)."""

    name = "probe"
    paper = "linear probe: ridge regression on frozen pooled features (msakit's floor)"
    config_class = ProbeConfig
    fits_in_closed_form = True

    def __init__(self, config: ProbeConfig, dims: FeatureDims):
        super().__init__(config, dims)
        self.modalities = tuple(config.modalities)
        size = 0
        for modality in ("audio", "vision"):
            if modality in self.modalities and getattr(dims, modality) < 1:
                others = [m for m in self.modalities if m != modality]
                raise ValueError(
                    f"model.modalities includes {modality!r} but the data has no {modality} "
                    f"features; use e.g. --set model.modalities=[{','.join(others)}]"
                )
        if "text" in self.modalities:
            self.text_encoder = PretrainedTextEncoder(
                config.language_model, pooling=config.text_pooling, freeze=True)
            size += self.text_encoder.hidden_size
        size += sum(2 * getattr(dims, m) for m in ("audio", "vision") if m in self.modalities)
        self.feature_size = size
        # float64: near-constant features (std ~1e-4 of their mean) are divided by their std
        float64 = {"dtype": torch.float64}
        self.register_buffer("feature_mean", torch.zeros(size, **float64))
        self.register_buffer("feature_scale", torch.ones(size, **float64))
        self.register_buffer("coefficients", torch.zeros(size, **float64))
        self.register_buffer("intercept", torch.zeros((), **float64))
        self.register_buffer("alpha", torch.zeros((), **float64))  # 0 until fitted
        self._validation_curve: dict[str, float] = {}

    def text_block_size(self) -> int:
        """How many leading features share one scale (the text block with ``text_scaling=block``)."""
        if "text" not in self.modalities or self.config.text_scaling != "block":
            return 0
        return self.text_encoder.hidden_size

    def pooled_features(self, batch: dict[str, Any]) -> torch.Tensor:
        """``(B, F)`` float64: the pooled text state, then audio and vision ``[mean, std]``."""
        parts = []
        if "text" in self.modalities:
            text = self.text_encoder.encode_batch(batch).float()  # (B, H)
            text = F.normalize(text, dim=-1) if self.config.text_normalize else text
            parts.append(text.double())
        for modality in ("audio", "vision"):
            if modality not in self.modalities:
                continue
            key = f"word_{modality}" if f"word_{modality}" in batch else modality
            mask_key = "word_mask" if key.startswith("word_") else f"{modality}_mask"
            for needed in (key, mask_key):
                if needed not in batch:
                    raise KeyError(f"probe with model.modalities={list(self.modalities)} needs "
                                   f"batch[{needed!r}]")
            parts.append(masked_time_mean_std(batch[key].double(), batch[mask_key]))
        return torch.cat(parts, dim=-1)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        standardised = (self.pooled_features(batch) - self.feature_mean) / self.feature_scale
        prediction = (standardised @ self.coefficients + self.intercept).float()  # (B,)
        losses = {}
        if "labels" in batch:
            losses["task"] = F.l1_loss(prediction, batch["labels"].to(prediction.dtype))
        return ModelOutput(prediction=prediction, losses=losses)

    @torch.no_grad()
    def collect(self, batches: Iterable[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features ``(N, F)`` and labels ``(N,)`` of every batch, in float64."""
        features, labels = [], []
        for batch in batches:
            features.append(self.pooled_features(batch))
            labels.append(batch["labels"].double().reshape(-1))
        if not features:
            raise ValueError("probe: no batches to fit on")
        return torch.cat(features), torch.cat(labels)

    @torch.no_grad()
    def fit_closed_form(self, train_batches: Iterable[dict[str, Any]],
                        valid_batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Standardise on the training batches, solve the ridge path, keep the penalty with the
        lowest validation MAE. Returns the fit's statistics for ``epochs.csv``."""
        self.eval()
        x_train, y_train = self.collect(train_batches)
        x_valid, y_valid = self.collect(valid_batches)
        with torch.autocast(x_train.device.type, enabled=False):  # the solve in float64
            return self._solve(x_train, y_train, x_valid, y_valid)

    def _solve(self, x_train: torch.Tensor, y_train: torch.Tensor, x_valid: torch.Tensor,
               y_valid: torch.Tensor) -> dict[str, float]:
        """Fit on ``x_train (N, F)``, ``y_train (N,)``; choose the penalty on the valid part."""
        mean, scale = standardisation(x_train, block=self.text_block_size())
        coefficients, intercept = ridge_path((x_train - mean) / scale, y_train,
                                             self.config.alphas)
        valid_predictions = ((x_valid - mean) / scale) @ coefficients.T + intercept  # (N_v, A)
        valid_mae = (valid_predictions - y_valid[:, None]).abs().mean(0)  # (A,)
        # the largest penalty among equally good ones: the simpler model
        best = int(torch.nonzero(valid_mae == valid_mae.min()).max())
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)
        self.coefficients.copy_(coefficients[best])
        self.intercept.copy_(intercept)
        self.alpha.fill_(self.config.alphas[best])
        self._validation_curve = {f"{a:g}": v for a, v in
                                  zip(self.config.alphas, valid_mae.tolist())}
        train_mae = ((x_train - mean) / scale @ coefficients[best] + intercept - y_train).abs()
        return {"task": float(train_mae.mean()), "total": float(train_mae.mean()),
                "alpha": self.config.alphas[best], "features": float(x_train.shape[1]),
                "clips": float(x_train.shape[0])}

    def run_artifacts(self) -> dict[str, Any]:
        """The chosen penalty and the validation MAE of every penalty of the grid."""
        if not self._validation_curve:
            return {}
        return {"ridge": {"alpha": float(self.alpha)},
                "validation_mae_by_alpha": dict(self._validation_curve)}
