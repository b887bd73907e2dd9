"""MMIM: MultiModal InfoMax (Han, Chen and Poria, EMNLP 2021, "Improving Multimodal Fusion with
Hierarchical Mutual Information Maximization for Multimodal Sentiment Analysis").

Faithful to MMSA's port (thuiar/MMSA@a94e65d, ``models/singleTask/MMIM.py`` and
``trains/singleTask/MMIM.py``) of the authors' code (declare-lab/Multimodal-Infomax@cd0774c).

Encoders (shapes for a batch of ``B`` clips):

- text: a fine-tuned language model's last-layer first-token state ``h_t`` ``(B, d_t)``;
- audio / vision: an LSTM (bidirectional by default) over the real steps, its final states
  (forward and backward concatenated) through a linear layer: ``h_a`` ``(B, d_a)``, ``h_v``
  ``(B, d_v)``.

Fusion (the paper's Section 3.1): ``z = tanh(W_2 tanh(W_1 drop([h_t; h_a; h_v])))`` ``(B, d_p)``,
prediction ``y_hat = W_3 z`` ``(B,)``.

Mutual-information terms:

- **MMILB** (Section 3.2, the Barber-Agakov lower bound of ``I(X; Y)`` for the pairs
  ``(h_t, h_v)``, ``(h_t, h_a)`` and, with ``add_va``, ``(h_v, h_a)``): a Gaussian
  ``q(y | x) = N(mu(x), exp(logvar(x)))`` with two-layer MLPs ``mu``, ``logvar``; its
  log-likelihood ``lld = mean_b sum_d -(mu - y)^2 / (2 exp(logvar))`` summed over the pairs.
  The entropy ``H(Y)`` is estimated from a memory of the last ``memory_size`` batches'
  projections ``p = tanh(W y)`` ``(B, d_y / 4)``, split by the sign of the label, as
  ``H = 1/4 (log det Sigma_pos + log det Sigma_neg)`` (covariances over memory + batch).
- **CPC** (Section 3.3): for each modality ``m``, ``x_hat = G_m(z)`` and
  ``nce_m = -mean_b [ <x_b, x_hat_b> - logsumexp_c <x_b, x_hat_c> ]`` on unit-normalised
  vectors; ``cpc = nce_t + nce_a + nce_v``.

Training (Section 3.4, MMSA's loop): every epoch first runs the **MMILB stage**, a pass over the
training batches minimising ``-lld`` with the MMILB networks' own Adam (``mmilb_lr``,
``mmilb_weight_decay``; a :class:`~msakit.models.base.TrainingStage`), then the main pass
minimising ``task + alpha cpc - beta lld - beta H`` (loss terms ``task`` (L1), ``cpc``,
``mmilb`` = ``-lld``, ``entropy`` = ``-H``; weights ``task`` 1, ``cpc`` alpha = 0.1, ``mmilb``
and ``entropy`` beta = 0.1) with Adam over the language model (``train.lm_lr``,
``train.lm_weight_decay``) and the rest but the MMILB networks (``train.lr``,
``train.weight_decay``). The memory starts empty every epoch; ``-beta H`` joins the loss from
the epoch's batch ``memory_size + 2`` on (1-based), as in MMSA. Gradients are clipped to norm 1
over every parameter in both passes; the main optimiser's learning rate halves after
``train.plateau_patience`` = 20 epochs without a lower validation loss.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from msakit.config_schema import LengthGroupedLMConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    TrainingStage,
    check_batch_sequence,
    require_modalities,
)
from msakit.modules.dropout import LSTM, Dropout
from msakit.modules.encoders import recurrent_input
from msakit.modules.text import PretrainedTextEncoder

Activation = Literal["ReLU", "Tanh", "Sigmoid", "GELU", "ELU", "LeakyReLU"]
LOSS_TERMS = ("task", "cpc", "mmilb", "entropy")


class MMIMConfig(LengthGroupedLMConfig):
    """MMIM hyper-parameters: MMSA's ``config_regression.json`` (``mmim``, identical for MOSI,
    MOSEI and SIMS but the language model)."""

    name: str = "mmim"
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0, "cpc": 0.1, "mmilb": 0.1, "entropy": 0.1},
        description="task (L1), cpc (alpha), mmilb = -lld and entropy = -H (both beta)")
    freeze_language_model: bool = Field(False, description="MMSA fine-tunes BERT (use_finetune)")
    audio_hidden: int = Field(16, ge=1, description="d_ah: audio LSTM hidden size")
    vision_hidden: int = Field(16, ge=1, description="d_vh")
    audio_out: int = Field(16, ge=4, description="d_aout: h_a size")
    vision_out: int = Field(16, ge=4, description="d_vout: h_v size")
    bidirectional: bool = Field(
        True, description="bidirectional audio/vision LSTMs (MMSA); the authors' README command "
        "(main.py --contrast, without --bidirectional) runs them unidirectional")
    fusion_hidden: int = Field(128, ge=1, description="d_prjh: size of z")
    fusion_dropout: float = Field(0.1, ge=0, lt=1, description="dropout_prj, on [h_t; h_a; h_v]")
    cpc_layers: int = Field(1, ge=1, description="layers of each CPC predictor G_m")
    cpc_activation: Activation = "Tanh"
    mmilb_activation: Activation = Field("ReLU", description="middle activation of the MMILB "
                                         "MLPs (mmilb_mid_activation)")
    add_va: bool = Field(False, description="add the vision-audio MMILB pair")
    contrast: bool = Field(
        True, description="MMSA's/the authors' contrast flag: the MMILB stage and the cpc/mmilb "
        "terms; false trains the task (and entropy) terms only")
    memory_size: int = Field(1, ge=1, description="mem_size: batches of projections the "
                             "entropy estimate remembers")
    mmilb_lr: float = Field(1e-3, gt=0, description="lr_mmilb: Adam of the MMILB stage")
    mmilb_weight_decay: float = Field(1e-4, ge=0, description="weight_decay_mmilb")
    mmilb_batch_fraction: float = Field(
        1.0, gt=0, le=1, description="share of each epoch's batches the MMILB stage reads "
        "(MMSA and the authors: 0.5 on MOSEI, else all)")

    @field_validator("loss_weights")
    @classmethod
    def _every_term_weighted(cls, weights: dict[str, float]) -> dict[str, float]:
        if set(weights) != set(LOSS_TERMS):
            raise ValueError(f"mmim model.loss_weights must give exactly the terms "
                             f"{list(LOSS_TERMS)}, got {sorted(weights)}")
        return weights


class FinalStateLSTM(nn.Module):
    """MMIM's ``RNNEncoder``: a one-layer LSTM over the real steps; its final hidden states
    (forward, backward when bidirectional) through a linear layer.

    Shapes: ``x (B, L, D_in)``, CPU ``lengths (B,)`` -> ``(B, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, bidirectional: bool):
        super().__init__()
        self.rnn = LSTM(in_dim, hidden_dim, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden_dim * (2 if bidirectional else 1), out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.to("cpu", torch.int64), batch_first=True,
                                      enforce_sorted=False)
        _, (final, _) = self.rnn(packed)  # (directions, B, H)
        return self.out(torch.cat(list(final), dim=-1))


class MMILB(nn.Module):
    """The modality mutual-information lower bound of one pair ``(x, y)``: a Gaussian
    ``q(y | x)``'s log-likelihood and the entropy projection of ``y``.

    Shapes: ``x (B, d_x)``, ``y (B, d_y)`` -> ``lld ()``; ``project(y)`` -> ``(B, d_y // 4)``.
    """

    def __init__(self, x_dim: int, y_dim: int, activation: str):
        super().__init__()
        act = getattr(nn, activation)
        self.mu = nn.Sequential(nn.Linear(x_dim, y_dim), act(), nn.Linear(y_dim, y_dim))
        self.logvar = nn.Sequential(nn.Linear(x_dim, y_dim), act(), nn.Linear(y_dim, y_dim))
        self.entropy_projection = nn.Sequential(nn.Linear(y_dim, y_dim // 4), nn.Tanh())

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        positive = -(self.mu(x) - y) ** 2 / 2.0 / torch.exp(self.logvar(x))
        return positive.sum(-1).mean()


def gaussian_log_det(samples: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log det`` of the covariance (divided by the count) of the rows of ``samples`` ``(N, d)``
    with weight 1 in ``weights`` ``(N,)`` (0/1): masks instead of selecting the rows, so nothing
    waits for the device."""
    count = weights.sum()
    mean = (samples * weights[:, None]).sum(0) / count
    centred = samples - mean
    return torch.logdet((centred * weights[:, None]).T @ centred / count)


class CPC(nn.Module):
    """Contrastive predictive coding of ``x`` from the fusion ``z`` (the NCE over the batch).

    Shapes: ``x (B, d_x)``, ``z (B, d_z)`` -> ``()``.
    """

    def __init__(self, x_dim: int, z_dim: int, layers: int, activation: str):
        super().__init__()
        if layers == 1:
            self.net = nn.Linear(z_dim, x_dim)
        else:
            modules: list[nn.Module] = [nn.Linear(z_dim, x_dim), getattr(nn, activation)()]
            modules += [nn.Linear(x_dim, x_dim) for _ in range(layers - 1)]
            self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        predicted = F.normalize(self.net(z), dim=1)
        x = F.normalize(x, dim=1)
        positive = (x * predicted).sum(-1)
        negative = torch.logsumexp(x @ predicted.T, dim=-1)
        return -(positive - negative).mean()


class FusionHead(nn.Module):
    """``z = tanh(W_2 tanh(W_1 drop(x)))`` ``(B, d_p)`` and the prediction ``W_3 z`` ``(B,)``."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.project = nn.Linear(in_dim, hidden)
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.tanh(self.hidden(torch.tanh(self.project(self.dropout(x)))))
        return z, self.out(z).squeeze(-1)


@register_model
class MMIM(MSAModel):
    """MMIM. Loss terms ``task``, ``cpc``, ``mmilb`` (= -lld), ``entropy`` (= -H, training only);
    in the MMILB stage only ``mmilb``. Extras in training: the detached entropy projections
    ``projection_<pair>`` ``(B, d_y / 4)`` that the memory keeps."""

    name = "mmim"
    paper = "Han et al., EMNLP 2021 (MMIM)"
    config_class = MMIMConfig

    def __init__(self, config: MMIMConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, self.name)
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="cls", freeze=config.freeze_language_model,
            group_by_length=config.lm_group_by_length)
        text_dim = self.text_encoder.hidden_size
        self.audio_encoder = FinalStateLSTM(dims.audio, config.audio_hidden, config.audio_out,
                                            config.bidirectional)
        self.vision_encoder = FinalStateLSTM(dims.vision, config.vision_hidden,
                                             config.vision_out, config.bidirectional)
        sizes = {"text": text_dim, "audio": config.audio_out, "vision": config.vision_out}
        #: MMILB pair -> (x modality, y modality)
        self.pairs = {"tv": ("text", "vision"), "ta": ("text", "audio")}
        if config.add_va:
            self.pairs["va"] = ("vision", "audio")
        self.mmilb = nn.ModuleDict({
            key: MMILB(sizes[x], sizes[y], config.mmilb_activation)
            for key, (x, y) in self.pairs.items()})
        self.cpc = nn.ModuleDict({
            m: CPC(size, config.fusion_hidden, config.cpc_layers, config.cpc_activation)
            for m, size in sizes.items()})
        self.fusion = FusionHead(sum(sizes.values()), config.fusion_hidden,
                                 config.fusion_dropout)
        # MMSA's trainer re-initialises every weight matrix outside the LM (do_train)
        lm = self.language_model_prefixes()
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and not name.startswith(lm):
                nn.init.xavier_normal_(parameter)
        self._memory: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._batch_index = 0

    # -- optimisation ------------------------------------------------------------------------
    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """MMSA's main Adam: the LM (``lm_lr``, ``lm_weight_decay``) and the rest but the MMILB
        networks (``lr``, ``weight_decay``); biases decay too."""
        lm = self.language_model_prefixes()
        groups = {"language_model": [], "other": []}
        for name, parameter in self.named_parameters():
            if parameter.requires_grad and not name.startswith("mmilb."):
                groups["language_model" if name.startswith(lm) else "other"].append(parameter)
        return [
            {"name": "language_model", "params": groups["language_model"], "lr": train.lm_lr,
             "weight_decay": train.lm_weight_decay},
            {"name": "other", "params": groups["other"], "lr": train.lr,
             "weight_decay": train.weight_decay},
        ]

    def training_stages(self, train: TrainConfig) -> list[TrainingStage]:
        """The MMILB stage (MMSA's ``train_mmilb``). Without ``contrast`` MMSA never steps its
        optimiser: the stage reads no batch, and the MMILB networks stay as initialised."""
        config: MMIMConfig = self.config  # type: ignore[assignment]
        params = [p for n, p in self.named_parameters() if p.requires_grad
                  and n.startswith("mmilb.")]
        group = {"name": "mmilb", "params": params, "lr": config.mmilb_lr,
                 "weight_decay": config.mmilb_weight_decay}
        return [TrainingStage("mmilb", [group],
                              config.mmilb_batch_fraction if config.contrast else 0.0)]

    # -- the entropy memory (MMSA's train_others) ------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self._memory = {key: [] for key in self.pairs}
        self._batch_index = 0

    def on_train_batch_end(self, batch: dict[str, Any], output: ModelOutput, epoch: int) -> None:
        """Remember this batch's projections and labels, replacing the oldest batch when full."""
        size = self.config.memory_size
        labels = batch["labels"].detach()
        for key, memory in self._memory.items():
            entry = (output.extras[f"projection_{key}"], labels)
            if len(memory) < size:
                memory.append(entry)
            else:
                memory[self._batch_index % size] = entry
        self._batch_index += 1

    def _entropy(self, key: str, projection: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``1/4 (log det Sigma_pos + log det Sigma_neg)`` over memory + this batch."""
        samples = torch.cat([p for p, _ in self._memory[key]] + [projection])
        signs = torch.cat([label for _, label in self._memory[key]] + [labels])
        return 0.25 * (gaussian_log_det(samples, (signs > 0).to(samples.dtype))
                       + gaussian_log_det(samples, (signs < 0).to(samples.dtype)))

    # -- forward -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        config: MMIMConfig = self.config  # type: ignore[assignment]
        text = self.text_encoder.encode_batch(batch)  # (B, d_t)
        check_batch_sequence(batch, "audio", self.dims.audio)
        check_batch_sequence(batch, "vision", self.dims.vision)
        audio, vision = recurrent_input(batch, "audio"), recurrent_input(batch, "vision")
        states = {"text": text, "audio": self.audio_encoder(audio.x, audio.host_lengths),
                  "vision": self.vision_encoder(vision.x, vision.host_lengths)}
        lld = sum(self.mmilb[key].log_likelihood(states[x], states[y])
                  for key, (x, y) in self.pairs.items())
        z, prediction = self.fusion(torch.cat([states["text"], states["audio"],
                                               states["vision"]], dim=-1))
        if self.training_stage == "mmilb":
            return ModelOutput(prediction=prediction, losses={"mmilb": -lld})

        labels = batch.get("labels")
        losses: dict[str, torch.Tensor] = {}
        extras: dict[str, torch.Tensor] = {}
        if labels is not None:
            losses["task"] = F.l1_loss(prediction, labels.to(prediction.dtype))
        if config.contrast:
            losses["cpc"] = sum(self.cpc[m](states[m], z) for m in ("text", "vision", "audio"))
            losses["mmilb"] = -lld
        if self.training and labels is not None:
            projections = {key: self.mmilb[key].entropy_projection(states[y])
                           for key, (_, y) in self.pairs.items()}
            extras = {f"projection_{k}": v.detach() for k, v in projections.items()}
            if self._memory and self._batch_index > config.memory_size:
                losses["entropy"] = -sum(self._entropy(k, v, labels.to(v.dtype))
                                         for k, v in projections.items())
            else:
                losses["entropy"] = prediction.new_zeros(())
        return ModelOutput(prediction=prediction, losses=losses, extras=extras)
