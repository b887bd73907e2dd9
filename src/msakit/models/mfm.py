"""MFM: Multimodal Factorization Model (Tsai, Liang et al., Learning Factorized Multimodal
Representations, ICLR 2019), as MMSA ports it (``MFM``).

MFM factorises a clip into a multimodal discriminative factor ``z_y`` (shared by all modalities,
it predicts the label) and one modality-specific generative factor ``z_m`` per modality; a
decoder regenerates each modality's sequence from ``[f_y; f_m]``. It is trained with a joint
generative-discriminative objective in the Wasserstein-autoencoder form the paper derives:
the task loss, the reconstruction cost of every modality, and an MMD penalty that pulls each
factor's batch distribution towards a standard normal prior. (The paper's text is not in the
project's papers folder, so its equation numbers are not cited; the terms below are the code's.)

On ``(T, B, D_m)`` step-major sequences (text: the frozen LM's token states, audio, vision; each
zero past its real steps and padded/truncated to ``seq_len`` = T):

======================  ========================================================  =============
block                   computation                                               output
======================  ========================================================  =============
generative encoders     z_m = Linear(h_m[T]), h_m = LSTMCell_m over x_m           ``(B, z_m)``
discriminative encoder  z_y = Linear(MFN core's final [h_l; h_a; h_v; u])         ``(B, z_y)``
factor networks         f = ReLU(Linear(Dropout(ReLU(Linear(z)))))  (y, l, a, v)  ``(B, f)``
decoders                x^_m[t] = Linear(s_m[t]), s_m = LSTMCell over T steps,    ``(T, B, D_m)``
                        input [f_y; f_m] at t = 1, then its own previous state
prediction              y^ = Linear(Dropout(ReLU(Linear(f_y))))                   ``(B,)``
======================  ========================================================  =============

Loss terms (the trainer multiplies each by ``model.loss_weights``; MMSA's weights are
``lda_xl``/``lda_xa``/``lda_xv`` and ``lda_mmd``):

- ``task``: L1 between y^ and the label (MMSA's ``disc_loss``);
- ``{text,audio,vision}_reconstruction``: mean squared error between x^_m and x_m over every
  element of the ``(T, B, D_m)`` arrays, padding included (MMSA's ``gen_loss`` terms; the targets
  are constants, as MMSA's fixed feature arrays);
- ``mmd``: the sum over z_l, z_a, z_v, z_y of MMD(z, n) with n ~ N(0, I) of z's shape, drawn
  anew at every forward pass; MMD(x, y) = mean k(n, n) + mean k(z, z) - 2 mean k(n, z) with
  k(x, y) = exp(-mean_d (x_d - y_d)^2 / d).

The auxiliary terms are computed when the batch has labels (training and evaluation); a
prediction alone skips the decoders.

The MFN core (``modules/mfn_core.py``) is MFN's: the same cells, attention and memory, with MFN's
own block settings. Layout (the same values as ``nn.LSTMCell`` step by step, up to float
rounding): an encoder's cell runs over its whole sequence in one LSTM kernel call
(``lstm_cell_sequence``); a decoder's cell, whose input after the first step is its own previous
``h``, is after that step an LSTM with recurrent weight ``W_ih + W_hh`` and no input, also one
kernel call.
Defaults are MMSA's MOSI settings (``config_regression.json``, ``mfm``):
LSTM sizes (text 128, audio 32, vision 128), memory 64, att1 32 / 0.7, att2 64 / 0.0, gamma1
32 / 0.0, gamma2 64 / 0.5, out 128 / 0.2; z_y 80, z_l 64, z_a 80, z_v 80; f_y 64, f_l 32, f_a
16, f_v 64; factor dropouts y 0.5, l 0.5, a 0.7, v 0.5, prediction 0.0; loss weights
reconstruction (0.5, 0.01, 0.5), mmd 100.

MMSA's trainer builds ``Adam(model.parameters(), weight_decay=weight_decay)`` and never passes
the configured ``learning_rate``: MFM trains at Adam's default 1e-3 whatever the config says
(0.002 for MOSI and SIMS). The presets set ``train.lr: 1.0e-3``, what MMSA's runs used.

Differences from the authors' code (pliang279/factorized, ``mfm_model.py`` ``MFM``), each a
setting whose default is MMSA's:

- ``run_unused_mfn_head``: MMSA's MFM calls MMSA's MFN, which also runs its output head; MFM
  discards that prediction, but its dropout draws a mask (the random stream, not the
  computation, differs). The authors' MFN stops at the final state. ``false`` skips the head.
- training: the authors' loop uses Adam at 1e-3 without weight decay, ``ReduceLROnPlateau``
  on the validation L1 (factor 0.1, patience 10) and a fixed epoch count keeping the best
  validation epoch; MMSA's uses the configured weight decay and early stopping after 8 epochs
  without improvement. ``train.weight_decay=0 train.scheduler=plateau train.plateau_factor=0.1
  train.plateau_patience=10 train.patience=null`` is the authors' loop.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import ModelConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_loss_weights,
    require_modalities,
)
from msakit.modules.dropout import Dropout
from msakit.modules.mfn_core import MemoryFusionCore, lstm_cell_sequence, lstm_layer
from msakit.modules.mmsa_subnets import (
    SingleAdamGroupMixin,
    fixed_length,
    frozen_language_model_field,
    mlp,
    task_losses,
)
from msakit.modules.text import PretrainedTextEncoder

MODALITIES = ("text", "audio", "vision")
#: the loss terms, each with a weight in ``model.loss_weights``
LOSS_TERMS = ("task", "text_reconstruction", "audio_reconstruction", "vision_reconstruction",
              "mmd")


class MFMConfig(ModelConfig):
    """MFM's hyper-parameters; defaults are MMSA's MOSI settings (``config_regression.json``)."""

    name: str = "mfm"
    freeze_language_model: bool = frozen_language_model_field()
    seq_len: int = Field(50, ge=1, description="steps T every sequence is padded/truncated to "
                         "(MMSA: the length of its aligned arrays, 50 for MOSI/MOSEI)")
    # the MFN core (MMSA's hidden_dims, memsize, NN1/NN2/gamma1/gamma2/outConfig)
    text_hidden: int = Field(128, ge=1)
    audio_hidden: int = Field(32, ge=1)
    vision_hidden: int = Field(128, ge=1)
    mem_dim: int = Field(64, ge=1, description="multi-view gated memory size (memsize)")
    att1_hidden: int = Field(32, ge=1)
    att1_dropout: float = Field(0.7, ge=0.0, lt=1.0)
    att2_hidden: int = Field(64, ge=1)
    att2_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    gamma1_hidden: int = Field(32, ge=1)
    gamma1_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    gamma2_hidden: int = Field(64, ge=1)
    gamma2_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    out_hidden: int = Field(128, ge=1, description="the MFN head's hidden size (the head runs "
                            "only with run_unused_mfn_head)")
    out_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    run_unused_mfn_head: bool = Field(
        True, description="True: the MFN core's output head runs and its prediction is "
        "discarded, drawing a dropout mask (MMSA's MFM calls its whole MFN); False: the core "
        "stops at its final state (the authors' code)")
    # factors (MMSA's names: z = factor, f = its network's output; y, l, a, v)
    zy_size: int = Field(80, ge=1, description="multimodal discriminative factor z_y")
    zl_size: int = Field(64, ge=1, description="text generative factor z_l")
    za_size: int = Field(80, ge=1, description="audio generative factor z_a")
    zv_size: int = Field(80, ge=1, description="vision generative factor z_v")
    fy_size: int = Field(64, ge=1)
    fl_size: int = Field(32, ge=1)
    fa_size: int = Field(16, ge=1)
    fv_size: int = Field(64, ge=1)
    zy_to_fy_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    zl_to_fl_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    za_to_fa_dropout: float = Field(0.7, ge=0.0, lt=1.0)
    zv_to_fv_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    fy_to_y_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    exempt_biases_from_decay: bool = Field(
        False, description="False: weight decay on every parameter (MMSA's single Adam group); "
        "True: biases and norm weights do not decay")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss (MMSA trains MFM with L1)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {
        "task": 1.0, "text_reconstruction": 0.5, "audio_reconstruction": 0.01,
        "vision_reconstruction": 0.5, "mmd": 100.0})

    @model_validator(mode="after")
    def _check_weights(self) -> MFMConfig:
        check_loss_weights(self.loss_weights, LOSS_TERMS, "mfm")
        return self


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(N, d), (M, d) -> (N, M)``: exp(-mean_d (x_d - y_d)^2 / d) (MMSA's ``compute_kernel``)."""
    squared = (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).mean(2)
    return torch.exp(-squared / float(x.shape[1]))


def mmd_to_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """MMD between the rows of ``z (B, d)`` and as many draws of N(0, I) (MMSA's ``loss_MMD``;
    the draws come from the global generator, in at least float32)."""
    dtype = torch.promote_types(z.dtype, torch.float32)
    z = z.to(dtype)
    prior = torch.randn(z.shape, dtype=dtype, device=z.device)
    return (gaussian_kernel(prior, prior).mean() + gaussian_kernel(z, z).mean()
            - 2.0 * gaussian_kernel(prior, z).mean())


class SequenceEncoder(nn.Module):
    """MMSA's ``encoderLSTM``: an LSTM cell over ``(T, B, D)``, its last hidden state through a
    Linear. ``-> (B, H)``. The cell runs over all steps in one LSTM kernel call
    (:func:`lstm_cell_sequence`), the same values as ``nn.LSTMCell`` step by step."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTMCell(in_dim, hidden)
        self.fc1 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = lstm_cell_sequence(self.lstm, x)
        return self.fc1(h)


class SequenceDecoder(nn.Module):
    """MMSA's ``decoderLSTM``: an LSTM cell run ``steps`` times, fed the code ``(B, H)`` at the
    first step and its own previous hidden state after; every hidden state through a Linear.
    ``-> (steps, B, D)``. After the first step input and state are the same ``h``, so the cell's
    gates are ``h (W_ih + W_hh)^T + b_ih + b_hh``: the steps after the first are an LSTM with
    recurrent weight ``W_ih + W_hh`` and no input (a zero input of width 1, with a zero input
    weight), all run in one LSTM kernel call. The same values as ``nn.LSTMCell`` step by step,
    up to float rounding."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.fc1 = nn.Linear(hidden, out_dim)

    def forward(self, code: torch.Tensor, steps: int) -> torch.Tensor:
        cell = self.lstm
        h, c = cell(code, (code.new_zeros(code.shape[0], cell.hidden_size),) * 2)
        hidden_states = h.unsqueeze(0)
        if steps > 1:
            no_input = code.new_zeros(steps - 1, code.shape[0], 1)
            weights = (code.new_zeros(4 * cell.hidden_size, 1), cell.weight_ih + cell.weight_hh,
                       cell.bias_ih, cell.bias_hh)
            later, _ = lstm_layer(no_input, weights, (h, c))
            hidden_states = torch.cat([hidden_states, later])
        return self.fc1(hidden_states)


class FactorNetwork(nn.Module):
    """``z -> f = ReLU(fc2(Dropout(ReLU(fc1(z)))))`` (MMSA's ``z*_to_f*`` blocks), ``(B, z) ->
    (B, f)``."""

    def __init__(self, z_size: int, f_size: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(z_size, f_size)
        self.fc2 = nn.Linear(f_size, f_size)
        self.dropout = Dropout(dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(mlp(self.fc1, self.dropout, self.fc2, z))


@register_model
class MFM(SingleAdamGroupMixin, MSAModel):
    """Multimodal Factorization Model (see the module docstring for blocks and losses)."""

    name = "mfm"
    paper = ("Tsai, Liang et al., Learning Factorized Multimodal Representations, ICLR 2019 "
             "(MMSA's port)")
    config_class = MFMConfig

    def __init__(self, config: MFMConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "mfm", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model)
        inputs = (self.text_encoder.hidden_size, dims.audio, dims.vision)
        z_sizes = (config.zl_size, config.za_size, config.zv_size)
        f_sizes = (config.fl_size, config.fa_size, config.fv_size)
        # MMSA's names (l, a, v; mfn_encoder), so that its state dicts map by name
        self.encoder_l, self.encoder_a, self.encoder_v = (
            SequenceEncoder(d, z) for d, z in zip(inputs, z_sizes))
        self.decoder_l, self.decoder_a, self.decoder_v = (
            SequenceDecoder(config.fy_size + f, d) for f, d in zip(f_sizes, inputs))
        self.mfn_encoder = MemoryFusionCore(config, inputs)
        core_size = sum((config.text_hidden, config.audio_hidden, config.vision_hidden,
                         config.mem_dim))
        self.last_to_zy_fc1 = nn.Linear(core_size, config.zy_size)
        self.zy_to_fy = FactorNetwork(config.zy_size, config.fy_size, config.zy_to_fy_dropout)
        self.zl_to_fl = FactorNetwork(config.zl_size, config.fl_size, config.zl_to_fl_dropout)
        self.za_to_fa = FactorNetwork(config.za_size, config.fa_size, config.za_to_fa_dropout)
        self.zv_to_fv = FactorNetwork(config.zv_size, config.fv_size, config.zv_to_fv_dropout)
        self.fy_to_y_fc1 = nn.Linear(config.fy_size, config.fy_size)
        self.fy_to_y_fc2 = nn.Linear(config.fy_size, 1)
        self.fy_to_y_dropout = Dropout(config.fy_to_y_dropout)

    def input_sequences(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Text, audio, vision as ``(T, B, D_m)`` step-major sequences of ``seq_len`` steps."""
        steps = self.config.seq_len
        text = fixed_length(self.text_encoder.encode_batch(batch), batch["attention_mask"], steps)
        others = [fixed_length(batch[m], batch[f"{m}_mask"], steps) for m in ("audio", "vision")]
        return tuple(s.transpose(0, 1) for s in (text, *others))

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        sequences = self.input_sequences(batch)
        z_modalities = [encoder(x) for encoder, x in zip(
            (self.encoder_l, self.encoder_a, self.encoder_v), sequences)]
        final = self.mfn_encoder(*sequences)
        if self.config.run_unused_mfn_head:
            self.mfn_encoder.head(final)  # MMSA runs it and discards it (its dropout draws)
        z_y = self.last_to_zy_fc1(final)
        with_losses = "labels" in batch
        if with_losses:  # MMSA draws the prior samples here, before the factor dropouts
            mmd = sum(mmd_to_standard_normal(z) for z in (*z_modalities, z_y))
        f_y = self.zy_to_fy(z_y)
        f_modalities = [network(z) for network, z in zip(
            (self.zl_to_fl, self.za_to_fa, self.zv_to_fv), z_modalities)]
        losses = {}
        if with_losses:
            steps = sequences[0].shape[0]
            for modality, decoder, f_m, target in zip(
                    MODALITIES, (self.decoder_l, self.decoder_a, self.decoder_v), f_modalities,
                    sequences):
                reconstruction = decoder(torch.cat([f_y, f_m], dim=1), steps)
                losses[f"{modality}_reconstruction"] = F.mse_loss(reconstruction,
                                                                  target.detach())
            losses["mmd"] = mmd
        prediction = mlp(self.fy_to_y_fc1, self.fy_to_y_dropout, self.fy_to_y_fc2,
                         f_y).squeeze(-1)
        return ModelOutput(prediction=prediction,
                           losses={**task_losses(prediction, batch, self.config.loss), **losses})
