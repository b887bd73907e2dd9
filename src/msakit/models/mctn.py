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
from msakit.modules.dropout import LSTM, Dropout
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
        self.rnn = LSTM(in_dim, hidden, bidirectional=True)
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, (final, _) = self.rnn(x)
        joint = self.dropout(states[..., :self.hidden] + states[..., self.hidden:])
        return joint, torch.tanh(self.fc(final[-1] + final[-2]))


class Attention(nn.Module):
    """Additive attention ``softmax_j(v' tanh(W_a [s; H_j]))``: ``s (N, h), keys (N, S, h) ->
    (N, S)``, where ``keys`` = :meth:`keys` of the encoder states (``W_a``'s state half, applied
    once per translation instead of at every step).

    Computed as ``softmax_j((2v)' sigmoid(2 W_a [s; H_j]))``: ``tanh z = 2 sigmoid(2z) - 1``,
    and the softmax ignores the constant ``-sum(v)`` this adds to every score, so the weights are
    the same up to float rounding; PyTorch's CPU ``tanh`` costs about nine times its
    ``sigmoid`` (2.2 vs 0.24 ns per float32 element, torch 2.13, AVX-512), and this ``(N, S, h)``
    activation runs at every decoder step. The factors 2 are folded into the keys and, per
    translation, into the weights :meth:`step_weights` returns (transposed for ``mm``)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.attn = nn.Linear(2 * hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)

    def keys(self, states: torch.Tensor) -> torch.Tensor:
        """``H (S, N, h) -> 2 W_a^H H (N, S, h)``."""
        return F.linear(states, 2 * self.attn.weight[:, self.hidden:]).transpose(0, 1)

    def step_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(2 W_a^s)' (h, h)`` and ``2 v (h, 1)``, the weights of :meth:`forward`."""
        return 2 * self.attn.weight[:, :self.hidden].t(), 2 * self.v.weight.t()

    def forward(self, query: torch.Tensor, keys: torch.Tensor, query_weight: torch.Tensor,
                score_weight: torch.Tensor) -> torch.Tensor:
        query = torch.mm(query, query_weight).unsqueeze(1)  # (N, 1, h)
        scores = torch.matmul(torch.sigmoid(query + keys), score_weight).squeeze(2)
        return F.softmax(scores, dim=1)


@dataclass
class DecoderMemory:
    """What every step of one translation reuses (:meth:`Decoder.prepare`). ``W_y``/``W_c``: the
    step LSTM's input weights on the previous frame and on the context, the rows of the input,
    cell and output gates of both directions (``(6h, D + h)``; the forget gate multiplies the
    zero state); ``b`` = ``b_ih + b_hh`` of those rows; ``W_o``, ``b_o``: ``fc_out``'s weight and
    bias. Weights are stored transposed, as ``mm`` takes them."""

    states: torch.Tensor  #: encoder states ``(N, S, h)``
    keys: torch.Tensor  #: attention keys ``(N, S, h)``
    query_weight: torch.Tensor  #: the attention's query weight ``(h, h)``
    score_weight: torch.Tensor  #: the attention's score weight ``(h, 1)``
    context_weight: torch.Tensor  #: ``W_c'`` ``(h, 6h)``
    zero_frame_gates: torch.Tensor  #: the gates' frame part of a zero frame, ``b`` ``(6h,)``
    frame_weight: torch.Tensor  #: ``(W_y W_o)'`` ``(2h, 6h)``: a frame's gates from ``[o; c]``
    frame_bias: torch.Tensor  #: ``W_y b_o + b`` ``(6h,)``
    #: ``W_y y + b`` of the target's frames (all but the last), ``S' - 1`` of ``(N, 6h)``, for
    #: teacher forcing; None when the translation never reads the target
    target_gates: tuple[torch.Tensor, ...] | None


class Decoder(nn.Module):
    """One output step: ``gates of y_prev (N, 6h), s (N, h), memory -> o (N, h), c (N, h)``; the
    frames ``y = W_o [o; c] + b_o`` (``(S', N, D)``) of all steps at once by :meth:`frames`.

    MMSA runs a BiLSTM over the one-step sequence ``[y_prev; c]`` from a zero state (``rnn``,
    MMSA's names). From a zero state each direction is ``h = sigmoid(o) tanh(sigmoid(i)
    tanh(g))`` of its gates ``W_ih x + b_ih + b_hh`` (the forget gate and ``W_hh`` multiply the
    zero state), computed so here: the same values as the LSTM call, without its per-call cost
    at every step. ``weight_hh`` stays a parameter so that MMSA's state dicts map; it never
    receives a gradient (MMSA's is zero).

    The gates are linear in the frame a step reads: ``W_ih [y; c] + b = (W_y y + b) + W_c c``.
    The frame part is computed where the frame is known: for the target's frames (teacher
    forcing) in one matrix product per translation (:meth:`prepare`), for the decoder's own
    frame ``y = W_o [o; c] + b_o`` as ``(W_y W_o) [o; c] + (W_y b_o + b)``
    (:meth:`frame_gates`, a ``2h``-wide product instead of the ``D``-wide ``fc_out`` and
    ``W_y``). Both are exact rewrites (the same values up to float rounding) of MMSA's step,
    which computes ``fc_out`` and the whole ``W_ih`` product at every step.
    """

    def __init__(self, out_dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.attention = Attention(hidden)
        self.rnn = LSTM(out_dim + hidden, hidden, bidirectional=True)
        self.fc_out = nn.Linear(2 * hidden, out_dim)

    def prepare(self, states: torch.Tensor, target: torch.Tensor | None,
                target_width: int | None = None) -> DecoderMemory:
        """The per-translation part of every step, from the encoder states ``(S, N, h)`` and
        the target ``(S', N, D)`` when its frames are read (teacher forcing), else None; only
        its first ``target_width`` features are read (the rest is zero padding, which adds
        exact zeros to the gates and to ``W_y``'s gradient)."""
        rnn, width, hidden = self.rnn, self.fc_out.out_features, self.hidden
        used = [0, 2, 3]  # PyTorch's gate order i, f, g, o: the input, cell and output gates
        weight = torch.stack([rnn.weight_ih_l0, rnn.weight_ih_l0_reverse]).view(
            2, 4, hidden, -1)[:, used].reshape(6 * hidden, -1)  # (6h, D + h)
        bias = torch.stack([rnn.bias_ih_l0 + rnn.bias_hh_l0,
                            rnn.bias_ih_l0_reverse + rnn.bias_hh_l0_reverse]).view(
            2, 4, hidden)[:, used].reshape(-1)
        frame_weight = weight[:, :width]  # W_y (6h, D)
        target_gates = None
        if target is not None:
            read = target_width or width
            target_gates = F.linear(target[:-1, :, :read], frame_weight[:, :read], bias).unbind(0)
        query_weight, score_weight = self.attention.step_weights()
        return DecoderMemory(
            states=states.transpose(0, 1), keys=self.attention.keys(states),
            query_weight=query_weight, score_weight=score_weight,
            context_weight=weight[:, width:].t(), zero_frame_gates=bias,
            frame_weight=(frame_weight @ self.fc_out.weight).t(),
            frame_bias=torch.addmv(bias, frame_weight, self.fc_out.bias),
            target_gates=target_gates)

    def forward(self, previous_gates: torch.Tensor, query: torch.Tensor, memory: DecoderMemory
                ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.attention(query, memory.keys, memory.query_weight,
                                 memory.score_weight).unsqueeze(1)  # (N, 1, S)
        context = torch.bmm(weights, memory.states).squeeze(1)  # (N, h)
        gates = torch.addmm(previous_gates, context, memory.context_weight)  # (N, 6h)
        i, g, o = gates.view(-1, 2, 3, self.hidden).unbind(2)  # per direction
        output = (torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))).sum(1)
        # MMSA: the directions' outputs summed, and their final states summed: the same here
        return output, context

    def frame_gates(self, output: torch.Tensor, context: torch.Tensor, memory: DecoderMemory
                    ) -> torch.Tensor:
        """``W_y y + b`` of the frame ``y`` of a step's ``o``, ``c`` ``(N, h)``: ``(N, 6h)``."""
        return torch.addmm(memory.frame_bias, torch.cat([output, context], dim=1),
                           memory.frame_weight)

    def frames(self, outputs: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """The frames ``y = W_o [o; c] + b_o`` of all steps: ``(S', N, h) x 2 -> (S', N, D)``."""
        return self.fc_out(torch.cat([outputs, contexts], dim=2))


class RegressionHead(nn.Module):
    """LSTM + attention over time: ``(S, N, h)`` recurrence layout -> ``(B,)``;
    ``batch_first_states(A)`` turns the LSTM states into ``(B, T, h)``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.rnn = LSTM(hidden, hidden)
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
                  target: torch.Tensor, target_width: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``source (S, N, D_in), target (S', N, D)`` -> encoder states ``(S, N, h)`` and the
        translation ``(S', N, D)``, decoded step by step (module docstring); ``target_width``:
        the target's features before its zero padding to ``D`` (None: all ``D``).

        A step reads the previous frame through its gates' frame part only (:class:`Decoder`):
        the target's, computed for all steps up front, or the decoder's own."""
        states, query = encoder(source)
        mmsa = self.config.recurrence == "mmsa_batch_axis"
        if mmsa and target.shape[0] == 1:  # MMSA's loop over a one-clip batch writes nothing
            return states, torch.zeros_like(target)
        ratio = self.config.teacher_forcing_ratio
        forcing = ratio == 1.0 or (self.training and ratio > 0.0)
        memory = decoder.prepare(states, target if forcing or mmsa else None, target_width)
        first = 1 if mmsa else 0  # MMSA never writes step 0 and starts from the target's frame 0
        previous = (memory.target_gates[0] if mmsa
                    else memory.zero_frame_gates.expand(target.shape[1], -1))
        outputs, contexts = [], []
        for i in range(first, target.shape[0]):
            output, context = decoder(previous, query, memory)
            outputs.append(output)
            contexts.append(context)
            query = output
            if i + 1 == target.shape[0]:
                break
            if ratio == 1.0:
                previous = memory.target_gates[i]
            elif forcing:  # a draw per clip, no host sync
                draw = torch.rand(target.shape[1], 1, device=target.device) < ratio
                previous = torch.where(draw, memory.target_gates[i],
                                       decoder.frame_gates(output, context, memory))
            else:
                previous = decoder.frame_gates(output, context, memory)
        frames = decoder.frames(torch.stack(outputs), torch.stack(contexts))
        if mmsa:
            frames = torch.cat([torch.zeros_like(target[:1]), frames])
        return states, frames

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
        joint, vision_hat = self.translate(self.encoder1, self.decoder1, text, vision,
                                           self.dims.vision)  # translation
        _, text_hat = self.translate(self.encoder1, self.decoder1, vision_hat, text,
                                     self.text_encoder.hidden_size)  # cycle
        joint2, audio_hat = self.translate(self.encoder2, self.decoder2, joint, audio,
                                           self.dims.audio)  # second level
        prediction = self.regression(joint2, self.recurrence_layout)
        losses = task_losses(prediction, batch, self.config.loss)
        losses.update(text_to_vision=F.mse_loss(vision_hat, vision),
                      vision_to_text=F.mse_loss(text_hat, text),
                      joint_to_audio=F.mse_loss(audio_hat, audio))
        return ModelOutput(prediction=prediction, losses=losses)
