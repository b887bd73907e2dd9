"""MCTN: Multimodal Cyclic Translation Network (Pham et al., AAAI 2019), as MMSA ports it (``MCTN``).

A joint representation is learned by translating the source modality (text) into a target
modality (vision) with an attention seq2seq model, translating the result back (the cycle), and
translating the joint representation into the third modality (audio) with a second seq2seq
model; a recurrent head with attention regresses the sentiment from that second encoding. At test
time only the text is needed for the prediction (the paper's section 3 and the authors'
hainow/MCTN; the paper's text is not in the project's papers, so no equation numbers are cited).

========================  =======================================================  ============
block                     computation (MMSA's names)                               output
========================  =======================================================  ============
inputs                    x_t, x_v, x_a fixed to ``seq_len`` = T steps, features  ``(B, T, D)``
                          zero-padded to D = max(d_t, d_a, d_v) (the cycle reuses
                          one encoder for text and translated vision)
encoder (``encoder1``)    H = fwd + bwd states of a BiLSTM over x;                 ``(B, T, h)``
                          s0 = tanh(W (h_fwd + h_bwd)) of its final states         ``(B, h)``
attention                 a_j = softmax_j(v' tanh(W_a [s; H_j])), c = sum a_j H_j  ``(B, h)``
decoder (``decoder1``)    y_i = W_o [BiLSTM_sum([y_{i-1}; c]); c], s = h_fwd + h_bwd  ``(B, D)``
translation               x_v^ = Dec(Enc(x_t)); joint representation E = Enc(x_t)  ``(B, T, D)``
cycle                     x_t^ = Dec(Enc(x_v^)) with the same encoder/decoder      ``(B, T, D)``
second level              E2 = Enc2(E) ``(B, T, h)``, x_a^ = Dec2(E2)              ``(B, T, D)``
regression head           A = LSTM(E2); w = softmax_t(tanh(W A_t)); y = W' sum w A  ``(B,)``
losses                    L1(y, label) + 0.1 MSE(x_v^, x_v) + 0.1 MSE(x_t^, x_t)
                          + 0.1 MSE(x_a^, x_a)  (``loss_weights``)
========================  =======================================================  ============

(``h`` = ``hidden``.) The decoder's LSTM runs one step from a zero state at every output step:
its state carries over only through ``s``, the attention query (MMSA's code). Step ``i`` reads the
previous frame ``y_{i-1}``: the target's (teacher forcing, probability ``teacher_forcing_ratio``
per step and clip in training) or the decoder's own output; step 0 reads a zero frame.
Defaults are MMSA's MOSI settings (``config_regression.json``: hidden 32, max_seq_len 50; Adam
1e-4, batch 32, gradient norm clipped at 1.0); dropout is hard-coded 0 in MMSA.

``recurrence`` chooses the axis the LSTMs run over. ``time`` (default): over the T steps of each
clip, so a clip's prediction depends on that clip alone. ``mmsa_batch_axis``: MMSA's code, which
feeds ``(B, T, D)`` tensors to sequence-first LSTMs, so every LSTM and both attentions run over
the clips of the batch (each step of a clip sees the other clips), and each translation's loop
starts from the target of clip 0 and never writes clip 0's output (it stays zero, and enters the
losses as zeros). The text is the (frozen) LM's token states, as for MMSA's other non-BERT models.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from msakit.modules.mmsa_subnets import (
    SingleAdamGroupMixin,
    fixed_length,
    frozen_language_model_field,
    task_losses,
)
from msakit.modules.text import PretrainedTextEncoder

#: loss terms: the task and the three translations
MCTN_LOSS_TERMS = ("task", "text_to_vision", "vision_to_text", "joint_to_audio")


class MCTNConfig(ModelConfig):
    """MCTN's hyper-parameters; defaults are MMSA's MOSI settings (``config_regression.json``)."""

    name: str = "mctn"
    freeze_language_model: bool = frozen_language_model_field()
    seq_len: int = Field(50, ge=1, description="steps T every sequence is padded/truncated to "
                         "(MMSA's max_seq_len: 50)")
    hidden: int = Field(32, ge=1, description="hidden size of every encoder, decoder and the "
                        "regression LSTM (MMSA's hid_dim)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the encoders' outputs "
                           "(MMSA hard-codes 0)")
    recurrence: Literal["time", "mmsa_batch_axis"] = Field(
        "time", description="time: the LSTMs and attentions run over each clip's steps; "
        "mmsa_batch_axis: MMSA's code, which runs them over the clips of the batch and leaves "
        "clip 0's translations at zero")
    teacher_forcing_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="probability, per decoder step and clip in training, "
        "that the step reads the target's previous frame instead of the decoder's own output; "
        "evaluation decodes from its own outputs, except at 1.0, which teacher-forces in "
        "evaluation too (MMSA's code always teacher-forces, whatever ratio it passes)")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss (MMSA: L1)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {
        "task": 1.0, "text_to_vision": 0.1, "vision_to_text": 0.1, "joint_to_audio": 0.1})
    exempt_biases_from_decay: bool = Field(
        False, description="False: weight decay on every parameter (MMSA's single Adam group); "
        "True: biases and norm weights do not decay")

    @model_validator(mode="after")
    def _check_weights(self) -> MCTNConfig:
        check_loss_weights(self.loss_weights, MCTN_LOSS_TERMS, "mctn")
        return self


class Encoder(nn.Module):
    """BiLSTM encoder: ``(S, N, D_in) -> H (S, N, h), s0 (N, h)`` in the recurrence layout
    (``S`` the axis the LSTM runs over), directions summed."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.hidden = hidden
        self.rnn = nn.LSTM(in_dim, hidden, bidirectional=True)
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, (final, _) = self.rnn(x)
        joint = self.dropout(states[..., :self.hidden] + states[..., self.hidden:])
        return joint, torch.tanh(self.fc(final[-1] + final[-2]))


class Attention(nn.Module):
    """Additive attention ``softmax_j(v' tanh(W_a [s; H_j]))``: ``s (N, h), keys (N, S, h) ->
    (N, S)``, where ``keys`` = :meth:`keys` of the encoder states (``W_a``'s state half, applied
    once per translation instead of at every step)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.attn = nn.Linear(2 * hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)

    def keys(self, states: torch.Tensor) -> torch.Tensor:
        """``H (S, N, h) -> W_a^H H (N, S, h)``."""
        return F.linear(states, self.attn.weight[:, self.hidden:]).transpose(0, 1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        query = F.linear(query, self.attn.weight[:, :self.hidden]).unsqueeze(1)
        return F.softmax(self.v(torch.tanh(query + keys)).squeeze(2), dim=1)


@dataclass
class DecoderMemory:
    """What every step of one translation reuses (:meth:`Decoder.prepare`)."""

    states: torch.Tensor  #: encoder states ``(N, S, h)``
    keys: torch.Tensor  #: attention keys ``(N, S, h)``
    weight: torch.Tensor  #: the step LSTM's input weights, both directions ``(8h, D + h)``
    bias: torch.Tensor  #: its biases ``b_ih + b_hh``, both directions ``(8h,)``


class Decoder(nn.Module):
    """One output step: ``y_prev (N, D), s (N, h), memory -> y (N, D), s (N, h)``.

    MMSA runs a BiLSTM over the one-step sequence ``[y_prev; c]`` from a zero state (``rnn``,
    MMSA's names). From a zero state each direction is ``h = sigmoid(o) tanh(sigmoid(i)
    tanh(g))`` of its gates ``W_ih x + b_ih + b_hh`` (the forget gate and ``W_hh`` multiply the
    zero state), computed so here: the same values as the LSTM call, without its per-call cost
    at every step. ``weight_hh`` stays a parameter so that MMSA's state dicts map; it never
    receives a gradient (MMSA's is zero).
    """

    def __init__(self, out_dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.attention = Attention(hidden)
        self.rnn = nn.LSTM(out_dim + hidden, hidden, bidirectional=True)
        self.fc_out = nn.Linear(2 * hidden, out_dim)

    def prepare(self, states: torch.Tensor) -> DecoderMemory:
        """The per-translation part of every step, from the encoder states ``(S, N, h)``."""
        rnn = self.rnn
        return DecoderMemory(
            states=states.transpose(0, 1), keys=self.attention.keys(states),
            weight=torch.cat([rnn.weight_ih_l0, rnn.weight_ih_l0_reverse]),
            bias=torch.cat([rnn.bias_ih_l0 + rnn.bias_hh_l0,
                            rnn.bias_ih_l0_reverse + rnn.bias_hh_l0_reverse]))

    def forward(self, previous: torch.Tensor, query: torch.Tensor, memory: DecoderMemory
                ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.attention(query, memory.keys).unsqueeze(1)  # (N, 1, S)
        context = torch.bmm(weights, memory.states).squeeze(1)  # (N, h)
        gates = F.linear(torch.cat([previous, context], dim=1), memory.weight, memory.bias)
        i, _, g, o = gates.view(-1, 2, 4, self.hidden).unbind(2)  # PyTorch's order i, f, g, o
        output = (torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))).sum(1)
        # MMSA: the directions' outputs summed, and their final states summed: the same here
        return self.fc_out(torch.cat([output, context], dim=1)), output


class RegressionHead(nn.Module):
    """LSTM + attention over time: ``(S, N, h)`` recurrence layout -> ``(B,)``;
    ``batch_first_states(A)`` turns the LSTM states into ``(B, T, h)``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.rnn = nn.LSTM(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)
        self.linear2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, batch_first_states) -> torch.Tensor:
        states = batch_first_states(self.rnn(x)[0])  # (B, T, h)
        weights = F.softmax(torch.tanh(self.linear(states)).squeeze(2), dim=1)
        return self.linear2((states * weights.unsqueeze(2)).sum(1)).squeeze(-1)


@register_model
class MCTN(SingleAdamGroupMixin, MSAModel):
    """Multimodal Cyclic Translation Network (see the module docstring for blocks and sizes)."""

    name = "mctn"
    paper = ("Pham et al., Found in Translation: Learning Robust Joint Representations by Cyclic "
             "Translations Between Modalities, AAAI 2019 (MMSA's port)")
    config_class = MCTNConfig

    def __init__(self, config: MCTNConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "mctn", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model)
        #: D: every modality is zero-padded to the widest (MMSA: output_dim, its BERT's 768)
        self.feature_dim = max(self.text_encoder.hidden_size, dims.audio, dims.vision)
        hidden = config.hidden
        # MMSA's names, so that its state dicts map by name
        self.encoder1 = Encoder(self.feature_dim, hidden, config.dropout)
        self.decoder1 = Decoder(self.feature_dim, hidden)
        self.encoder2 = Encoder(hidden, hidden, config.dropout)
        self.decoder2 = Decoder(self.feature_dim, hidden)
        self.regression = RegressionHead(hidden)

    def recurrence_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, ...)`` <-> the ``(S, N, ...)`` layout the LSTMs run over (``S`` = T in the
        ``time`` recurrence; MMSA's ``mmsa_batch_axis`` takes the batch-first tensor as is)."""
        return x.transpose(0, 1) if self.config.recurrence == "time" else x

    def translate(self, encoder: Encoder, decoder: Decoder, source: torch.Tensor,
                  target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``source (S, N, D_in), target (S', N, D)`` -> encoder states ``(S, N, h)`` and the
        translation ``(S', N, D)``, decoded step by step (module docstring)."""
        states, query = encoder(source)
        memory = decoder.prepare(states)
        mmsa = self.config.recurrence == "mmsa_batch_axis"
        ratio = self.config.teacher_forcing_ratio
        previous = target[0] if mmsa else torch.zeros_like(target[0])
        outputs = [torch.zeros_like(target[0])] if mmsa else []  # MMSA never writes step 0
        for i in range(len(outputs), target.shape[0]):
            output, query = decoder(previous, query, memory)
            outputs.append(output)
            if ratio == 1.0:
                previous = target[i]
            elif self.training and ratio > 0.0:  # a draw per clip, no host sync
                draw = torch.rand(target.shape[1], 1, device=target.device) < ratio
                previous = torch.where(draw, target[i], output)
            else:
                previous = output
        return states, torch.stack(outputs)

    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Text, audio, vision ``(B, T, D)``: ``seq_len`` steps, zero-padded to ``feature_dim``."""
        steps, width = self.config.seq_len, self.feature_dim
        text = fixed_length(self.text_encoder.encode_batch(batch), batch["attention_mask"], steps)
        audio = fixed_length(batch["audio"], batch["audio_mask"], steps)
        vision = fixed_length(batch["vision"], batch["vision_mask"], steps)
        return tuple(F.pad(x, (0, width - x.shape[-1])) for x in (text, audio, vision))

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        text, audio, vision = (self.recurrence_layout(x) for x in self.inputs(batch))
        if "labels" not in batch:  # prediction only: the decoders feed nothing but the losses
            joint2 = self.encoder2(self.encoder1(text)[0])[0]
            return ModelOutput(prediction=self.regression(joint2, self.recurrence_layout))
        joint, vision_hat = self.translate(self.encoder1, self.decoder1, text, vision)  # translation
        _, text_hat = self.translate(self.encoder1, self.decoder1, vision_hat, text)  # cycle
        joint2, audio_hat = self.translate(self.encoder2, self.decoder2, joint, audio)  # second level
        prediction = self.regression(joint2, self.recurrence_layout)
        losses = task_losses(prediction, batch, self.config.loss)
        losses.update(text_to_vision=F.mse_loss(vision_hat, vision),
                      vision_to_text=F.mse_loss(text_hat, text),
                      joint_to_audio=F.mse_loss(audio_hat, audio))
        return ModelOutput(prediction=prediction, losses=losses)
