"""The pieces MMSA's feature-based models share: the unimodal sub-networks of the tensor-fusion
family (TFN, LMF, MTFN, MLF-DNN, MLMF; MMSA's ``models/subNets/FeatureNets.py``), their task
losses, optimiser layouts, TFN's tensor fusion and LMF's low-rank factors, MFN's multi-view gated
memory, and MMSA's ``avg_pool`` alignment (``models/subNets/AlignNets.py``).

Parameter names follow MMSA's (``norm``, ``drop``, ``linear_1`` ...), so an MMSA state dict maps
onto them by module prefix alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from msakit.errors import ConfigError
from msakit.modules.dropout import LSTM, Dropout
from msakit.modules.encoders import masked_time_mean
from msakit.modules.text import PretrainedTextEncoder, length_groups


def frozen_language_model_field():
    """``freeze_language_model`` of MMSA's non-BERT models (a pydantic field, default True)."""
    return Field(True, description="MMSA's non-BERT models read fixed BERT features: the LM is "
                 "frozen")


def text_lstm_reads_padding_field():
    """``text_lstm_reads_padding`` of the models with :class:`TextLSTMSubNet` (default False)."""
    return Field(False, description="True: the LSTM runs over the batch's padded length, as "
                 "MMSA's unpacked LSTM (a prediction then depends on the batch's padding); "
                 "False: real tokens")


def average_steps_field(modality: str):
    """``{audio,vision}_average_steps``: the ``steps`` of :func:`masked_time_mean` (default
    None), with MMSA's array lengths in the description."""
    lengths = {"audio": "MOSI/MOSEI: 50 aligned, 500 unaligned; SIMS: 400",
               "vision": "MOSI/MOSEI: 50 aligned, 375 unaligned; SIMS: 55"}[modality]
    return Field(None, ge=1, description=f"{modality} summary: None = mean over the real steps; "
                 f"N = sum over the real steps / N, MMSA's mean over its N-step zero-padded "
                 f"array ({lengths})")


def by_position(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, L, D)`` zero-padded or truncated to ``(B, steps, D)``: step ``t`` goes with token
    ``t`` (a no-op on word-aligned batches, where ``L`` is the token count)."""
    if x.shape[1] >= steps:
        return x[:, :steps]
    return F.pad(x, (0, 0, 0, steps - x.shape[1]))


def fixed_length(x: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, L, D), (B, L) -> (B, steps, D)``: zero past the real steps, then zero-padded or
    truncated to ``steps`` (MMSA's fixed-length arrays)."""
    return by_position(x * mask.to(x.dtype).unsqueeze(-1), steps)


def single_adam_group(model: nn.Module, train) -> list[dict]:
    """MMSA's optimiser layout for most of its models: one Adam group, ``train.lr`` and
    ``train.weight_decay`` on every trainable parameter, biases and norm weights included
    (a pretrained LM, if it trains, in its own group at ``train.lm_lr``)."""
    prefixes = tuple(name + "." for name, module in model.named_modules()
                     if getattr(module, "is_pretrained_language_model", False))
    groups = []
    for is_lm in (True, False):
        params = [p for n, p in model.named_parameters() if p.requires_grad
                  and bool(prefixes and n.startswith(prefixes)) == is_lm]
        if params:
            groups.append({"name": "language_model" if is_lm else "other", "params": params,
                           "lr": train.lm_lr if is_lm else train.lr,
                           "weight_decay": train.lm_weight_decay if is_lm
                           else train.weight_decay})
    return groups


def avg_pool_align(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, L, D) -> (B, steps, D)``: MMSA's ``AlignSubNet`` in ``avg_pool`` mode, which fits an
    audio/vision array to the text length for its ``need_model_aligned`` models. ``L`` is padded
    to the next multiple of ``steps`` by repeating the last step, then every
    ``ceil(L / steps)`` consecutive steps are averaged; ``L == steps`` is returned as is."""
    length = x.shape[1]
    if length == steps:
        return x
    pool = -(-length // steps)  # ceil
    pad = pool * steps - length
    x = torch.cat([x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    return x.reshape(x.shape[0], steps, pool, x.shape[-1]).mean(dim=2)


class RegressionHead(nn.Module):
    """MMSA's post-fusion / unimodal heads: Dropout -> Linear + ReLU -> Linear + ReLU -> Linear.
    ``(B, D) -> (B,)``."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.layer_1 = nn.Linear(in_dim, hidden)
        self.layer_2 = nn.Linear(hidden, hidden)
        self.layer_3 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.layer_2(F.relu(self.layer_1(self.dropout(x)))))
        return self.layer_3(x).squeeze(-1)


def subnet_decay_groups(model: nn.Module, train, groups_by_prefix: dict[str, tuple[float, float]],
                        other_decay: float) -> list[dict]:
    """MMSA's multi-task optimiser layout: the trainable parameters under each prefix of
    ``groups_by_prefix`` (e.g. ``"text_subnet."``, or an exact parameter name) in one group with
    that ``(lr, weight_decay)``, the rest at ``train.lr`` with ``other_decay`` (a fine-tuned LM
    in its own group at ``train.lm_lr``)."""
    prefixes = tuple(name + "." for name, module in model.named_modules()
                     if getattr(module, "is_pretrained_language_model", False))
    groups: dict[str, dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if prefixes and name.startswith(prefixes):
            key, (lr, wd) = "language_model", (train.lm_lr, train.lm_weight_decay)
        else:
            key = next((p for p in groups_by_prefix if name.startswith(p)), "other")
            lr, wd = groups_by_prefix.get(key, (train.lr, other_decay))
        groups.setdefault(key, {"name": key.rstrip("."), "params": [], "lr": lr,
                                "weight_decay": wd})["params"].append(parameter)
    return list(groups.values())


class FeatureSubNet(nn.Module):
    """MMSA's ``SubNet``: BatchNorm -> Dropout -> 3 x (Linear + ReLU). ``(B, D) -> (B, H)``.

    A training batch of one sample has no batch statistics (MMSA's BatchNorm raises); it is then
    normalised with the running statistics, as in evaluation.
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)
        self.drop = Dropout(dropout)
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.linear_3 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            normed = F.batch_norm(x, self.norm.running_mean, self.norm.running_var,
                                  self.norm.weight, self.norm.bias, training=False,
                                  eps=self.norm.eps)
        else:
            normed = self.norm(x)
        hidden = F.relu(self.linear_1(self.drop(normed)))
        return F.relu(self.linear_3(F.relu(self.linear_2(hidden))))


def lstm_final_state(rnn: nn.LSTM, states: torch.Tensor, mask: torch.Tensor,
                     reads_padding: bool = False) -> torch.Tensor:
    """The last layer's final hidden state of a unidirectional batch-first ``rnn`` over token
    states: ``(B, L, D), (B, L) -> (B, H)``.

    ``reads_padding=True`` runs it over every position up to the batch's padded length and reads
    its final state, as MMSA's unpacked LSTM does (a prediction then depends on the batch's
    padding); ``False`` reads each clip's state at its last real token, what an LSTM over the
    packed real tokens gives.

    ``False`` runs the fused LSTM and gathers each clip's output at its last real step: an
    LSTM's step t depends on steps up to t only, so it is the packed LSTM's final state, without
    PyTorch's packed-sequence path, which on the CPU steps through the time loop operation by
    operation (and, in its backward, fills a tokens x 4 hidden gradient per step: 30 % of an LMF
    training step). On the CPU the clips run in groups of similar length
    (:func:`~msakit.modules.text.length_groups`, one LSTM call costing about as much as 40
    tokens), so that padding costs little: MOSI's clips have 13.6 real tokens on average, 48 at
    most. On other devices the batch is one call (padding is cheap there, and the lengths would
    have to be read from the device).
    """
    if rnn.bidirectional or not rnn.batch_first:
        raise ValueError("lstm_final_state reads a unidirectional, batch-first LSTM")
    if reads_padding:
        _, (final, _) = rnn(states)
        return final[-1]
    lengths = mask.sum(1).long().clamp_min(1)  # a clip without tokens reads step 0
    if states.device.type != "cpu":
        return _outputs_at(rnn, states, lengths)
    host_lengths = lengths.tolist()
    groups = length_groups(host_lengths)
    parts = []
    for group in groups:
        rows = torch.tensor(group, device=states.device)
        longest = host_lengths[group[-1]]  # a group is sorted by length
        parts.append(_outputs_at(rnn, states[rows, :longest], torch.tensor(
            [host_lengths[i] for i in group], device=states.device)))
    order = torch.tensor([i for group in groups for i in group], device=states.device)
    return torch.cat(parts).index_select(0, torch.argsort(order))


def _outputs_at(rnn: nn.LSTM, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``rnn``'s output at step ``lengths - 1`` of each clip: ``(B, L, D), (B,) -> (B, H)``."""
    outputs, _ = rnn(states)
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
    return outputs.gather(1, index).squeeze(1)


class TextLSTMSubNet(nn.Module):
    """MMSA's ``TextSubNet``: a one-layer LSTM over token states, its final hidden state ->
    Linear. ``(B, L, D), (B, L) -> (B, out)``.

    ``dropout`` applies to the final state. MMSA's one-layer ``TextSubNet`` sets it to 0 whatever
    the config says; the authors' ``TextSubNet`` (Justin1904's TFN and LMF code) applies the text
    dropout there. ``reads_padding``: see :func:`lstm_final_state` (True: MMSA's unpacked LSTM
    over the padded batch; False: each clip's real tokens).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, reads_padding: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.reads_padding = reads_padding
        self.rnn = LSTM(in_dim, hidden, batch_first=True)
        self.dropout = Dropout(dropout)
        self.linear_1 = nn.Linear(hidden, out_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last_state = lstm_final_state(self.rnn, states, mask, self.reads_padding)
        return self.linear_1(self.dropout(last_state))


def task_losses(prediction: torch.Tensor, batch: dict, loss: str = "l1",
                reduction: str = "mean") -> dict[str, torch.Tensor]:
    """``{"task": loss}`` of ``prediction (B,)`` against ``batch["labels"]`` (``loss``: ``"l1"``
    or ``"mse"``), or ``{}`` when the batch has no labels."""
    if "labels" not in batch:
        return {}
    labels = batch["labels"].to(prediction.dtype).reshape(-1)
    loss_fn = F.l1_loss if loss == "l1" else F.mse_loss
    return {"task": loss_fn(prediction, labels, reduction=reduction)}


def tensor_fusion(audio: torch.Tensor, vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """TFN's eq. 1 (Zadeh et al., EMNLP 2017; TFN and MTFN): ``(B, d_a), (B, d_v), (B, d_t) ->
    (B, (d_a+1)(d_v+1)(d_t+1))``, the flattened outer product of the vectors with a 1 prepended,
    audio outermost (MMSA's order)."""
    batch = audio.shape[0]
    one = audio.new_ones(batch, 1)
    audio, vision, text = (torch.cat([one, x], dim=1) for x in (audio, vision, text))
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (audio, vision, text))):
        # no backward: broadcast products, the same values bit for bit (each entry is (a v) t
        # either way) without the batched products' overhead: 0.7 instead of 2.6 ms for TFN's
        # MOSI sizes (51 clips, 140481 entries each)
        audio_vision = (audio.unsqueeze(2) * vision.unsqueeze(1)).reshape(batch, -1, 1)
        return (audio_vision * text.unsqueeze(1)).reshape(batch, -1)
    # two batched outer products, (a (x) v) (x) t, as MMSA computes them: the same values as
    # einsum("ba,bv,bt->bavt"), but the backward's contractions run as batched matrix products
    # instead of broadcast multiplies and sums over the (B, d_a d_v d_t) tensor (MTFN at
    # CH-SIMS sizes, 2.2 M entries per clip: about a third less time per step on the CPU)
    audio_vision = torch.bmm(audio.unsqueeze(2), vision.unsqueeze(1)).reshape(batch, -1, 1)
    return torch.bmm(audio_vision, text.unsqueeze(1)).reshape(batch, -1)


#: MMSA's multi-task models (MLF-DNN, MTFN, MLMF): loss term -> (output, batch key of its labels)
MULTITASK_TERMS = {"task": ("fusion", "labels"), "text": ("text", "labels_T"),
                   "audio": ("audio", "labels_A"), "vision": ("vision", "labels_V")}


def check_multitask_loss_weights(weights: dict[str, float]) -> dict[str, float]:
    """For a config validator: ``task`` and optionally ``text``/``audio``/``vision``
    (raises ``ValueError``, which pydantic reports under the key)."""
    if "task" not in weights or not set(weights) <= set(MULTITASK_TERMS):
        raise ValueError(f"model.loss_weights must give 'task' and optionally text, audio, "
                         f"vision; got {sorted(weights)}")
    return weights


def multitask_losses(outputs: dict[str, torch.Tensor], batch: dict, terms: dict[str, float],
                     model: str, fusion: str = "fusion") -> dict[str, torch.Tensor]:
    """The L1 loss of each term of ``terms`` (loss weights by keys of :data:`MULTITASK_TERMS`)
    whose weight is not 0: ``outputs[head] (B,)`` against its labels; ``{}`` when the batch has
    no ``labels``.

    Raises:
        ConfigError: a unimodal term whose labels (CH-SIMS's ``labels_T/_A/_V``) the batch lacks,
            naming ``model``, the term and the labels (``fusion`` names what trains alone).
    """
    losses = {}
    if "labels" in batch:
        for term, weight in terms.items():
            head, key = MULTITASK_TERMS[term]
            if weight == 0 and term != "task":
                continue
            if key not in batch:
                raise ConfigError(
                    f"{model}'s loss term {term!r} needs the unimodal labels {key!r} "
                    f"(CH-SIMS), which this data does not have; to train the {fusion} alone, "
                    f"set the term's weight to 0: --set model.loss_weights.{term}=0")
            labels = batch[key].to(outputs[head].dtype).reshape(-1)
            losses[term] = F.l1_loss(outputs[head], labels)
    return losses


def unimodal_subnets(config, dims, text_out: int, text_dropout: float = 0.0
                     ) -> tuple[PretrainedTextEncoder, TextLSTMSubNet, FeatureSubNet, FeatureSubNet]:
    """The tensor-fusion family's ``(text_encoder, text_subnet, audio_subnet, vision_subnet)``:
    the (frozen) LM, the text LSTM to ``text_out`` and the audio/vision :class:`FeatureSubNet`
    (``config``: ``language_model``, ``freeze_language_model``, ``text_hidden``,
    ``text_lstm_reads_padding``, ``{audio,vision}_hidden``/``_dropout``)."""
    text_encoder = PretrainedTextEncoder(
        config.language_model, pooling="none", freeze=config.freeze_language_model)
    text_subnet = TextLSTMSubNet(text_encoder.hidden_size, config.text_hidden, text_out,
                                 config.text_lstm_reads_padding, dropout=text_dropout)
    audio_subnet = FeatureSubNet(dims.audio, config.audio_hidden, config.audio_dropout)
    vision_subnet = FeatureSubNet(dims.vision, config.vision_hidden, config.vision_dropout)
    return text_encoder, text_subnet, audio_subnet, vision_subnet


class UnimodalFeaturesMixin:
    """``unimodal_features`` for a model with :func:`unimodal_subnets`' modules and
    ``config.{audio,vision}_average_steps``."""

    def unimodal_features(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"audio": (B, audio_hidden), "vision": (B, vision_hidden), "text": (B, text_out)}``,
        computed in MMSA's order (audio, vision, text: the order of its dropout calls)."""
        features = {m: getattr(self, f"{m}_subnet")(masked_time_mean(
            batch[m], batch[f"{m}_mask"], getattr(self.config, f"{m}_average_steps")))
            for m in ("audio", "vision")}
        states = self.text_encoder.encode_batch(batch)  # (B, L_t, H)
        features["text"] = self.text_subnet(states, batch["attention_mask"])
        return features


#: LMF's factor parameters, MMSA's names (``video_factor``), so that its state dicts map by name
LOW_RANK_FACTORS = ("audio_factor", "video_factor", "text_factor")


def low_rank_parameters(rank: int, dims: tuple[int, int, int], train_fusion_weights: bool
                        ) -> tuple[nn.Parameter, ...]:
    """LMF's ``(audio_factor, video_factor, text_factor, fusion_weights, fusion_bias)`` for
    unimodal sizes ``dims = (d_a, d_v, d_t)``: factors ``(r, d_m + 1, 1)`` and weights ``(1, r)``
    Xavier-normal, bias ``(1, 1)`` zero; the weights and bias frozen unless
    ``train_fusion_weights`` (MMSA's optimiser never trains them)."""
    factors = [nn.Parameter(torch.empty(rank, d + 1, 1)) for d in dims]
    fusion_weights = nn.Parameter(torch.empty(1, rank))
    fusion_bias = nn.Parameter(torch.zeros(1, 1))
    for parameter in (*factors, fusion_weights):
        nn.init.xavier_normal_(parameter)
    if not train_fusion_weights:
        fusion_weights.requires_grad_(False)
        fusion_bias.requires_grad_(False)
    return (*factors, fusion_weights, fusion_bias)


def low_rank_fusion(features: dict[str, torch.Tensor], factors: tuple[torch.Tensor, ...],
                    fusion_weights: torch.Tensor, fusion_bias: torch.Tensor) -> torch.Tensor:
    """LMF's eq. 6: ``(B,)`` = fusion_weights @ prod_m([1; z_m] @ W_m) + fusion_bias, ``m`` over
    audio, vision, text (``factors`` in that order, each ``(r, d_m + 1, 1)``)."""
    product = None
    for modality, factor in zip(("audio", "vision", "text"), factors):
        z = features[modality]
        z = torch.cat([z.new_ones(z.shape[0], 1), z], dim=1)  # (B, d_m + 1)
        term = torch.matmul(z, factor)  # (r, B, 1)
        product = term if product is None else product * term
    fused = torch.matmul(fusion_weights, product.permute(1, 0, 2))  # (B, 1, 1)
    return fused.reshape(-1) + fusion_bias.reshape(())


def mlp(fc1: nn.Linear, dropout: nn.Dropout, fc2: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """MFN's two-layer networks: ``fc2(dropout(relu(fc1(x))))``."""
    return fc2(dropout(F.relu(fc1(x))))


class GatedMemoryMixin:
    """MFN's Multi-view Gated Memory and output head (MFN and Graph-MFN), with MMSA's names
    (``att2_*``, ``gamma1_*``, ``gamma2_*``, ``out_*``) so that its state dicts map by name."""

    def add_gated_memory(self, config, attended_dim: int, hidden_dim: int) -> None:
        """The proposed-memory network (att2) over the ``attended_dim`` attended cell states, the
        two gates over ``[attended; memory]`` and the head over ``[h_l; h_a; h_v; memory]``
        (``hidden_dim`` = the three LSTM sizes summed); sizes from ``config``."""
        gamma_in = attended_dim + config.mem_dim
        self.att2_fc1 = nn.Linear(attended_dim, config.att2_hidden)
        self.att2_fc2 = nn.Linear(config.att2_hidden, config.mem_dim)
        self.att2_dropout = Dropout(config.att2_dropout)
        self.gamma1_fc1 = nn.Linear(gamma_in, config.gamma1_hidden)
        self.gamma1_fc2 = nn.Linear(config.gamma1_hidden, config.mem_dim)
        self.gamma1_dropout = Dropout(config.gamma1_dropout)
        self.gamma2_fc1 = nn.Linear(gamma_in, config.gamma2_hidden)
        self.gamma2_fc2 = nn.Linear(config.gamma2_hidden, config.mem_dim)
        self.gamma2_dropout = Dropout(config.gamma2_dropout)
        self.out_fc1 = nn.Linear(hidden_dim + config.mem_dim, config.out_hidden)
        self.out_fc2 = nn.Linear(config.out_hidden, 1)
        self.out_dropout = Dropout(config.out_dropout)

    def update_memory(self, attended: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``u[t] = g1 (.) u[t-1] + g2 (.) tanh(D_u(c^))`` with ``g_i = sigmoid(D_gi([c^;
        u[t-1]]))``: ``(B, attended_dim), (B, mem) -> (B, mem)``."""
        proposed = torch.tanh(mlp(self.att2_fc1, self.att2_dropout, self.att2_fc2, attended))
        both = torch.cat([attended, memory], dim=1)
        gamma1 = torch.sigmoid(mlp(self.gamma1_fc1, self.gamma1_dropout, self.gamma1_fc2, both))
        gamma2 = torch.sigmoid(mlp(self.gamma2_fc1, self.gamma2_dropout, self.gamma2_fc2, both))
        return gamma1 * memory + gamma2 * proposed

    def memory_head(self, hidden: list[torch.Tensor], memory: torch.Tensor) -> torch.Tensor:
        """``(B,)`` from the cells' final hidden states ``h_l, h_a, h_v`` and the memory."""
        final = torch.cat([*hidden, memory], dim=1)
        return mlp(self.out_fc1, self.out_dropout, self.out_fc2, final).squeeze(-1)


class SingleAdamGroupMixin:
    """``parameter_groups``: MMSA's :func:`single_adam_group`, or msakit's default layout (biases
    and norm weights without decay) with ``config.exempt_biases_from_decay``. List it before
    ``MSAModel`` among the bases."""

    def parameter_groups(self, train) -> list[dict]:
        if self.config.exempt_biases_from_decay:
            return super().parameter_groups(train)
        return single_adam_group(self, train)


__all__ = ["LOW_RANK_FACTORS", "MULTITASK_TERMS", "FeatureSubNet", "GatedMemoryMixin",
           "RegressionHead", "SingleAdamGroupMixin", "TextLSTMSubNet", "UnimodalFeaturesMixin",
           "average_steps_field", "avg_pool_align", "check_multitask_loss_weights", "fixed_length",
           "frozen_language_model_field", "lstm_final_state", "low_rank_fusion",
           "low_rank_parameters", "mlp", "multitask_losses", "single_adam_group",
           "subnet_decay_groups", "task_losses", "tensor_fusion", "text_lstm_reads_padding_field",
           "unimodal_subnets"]
