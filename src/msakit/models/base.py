"""What every msakit model is: a uniform constructor, one forward, named loss terms, and hooks.

The batch a model receives (built by :mod:`msakit.data.collate`) is a dict:

=====================  =================  ==================================================
key                    shape / type       meaning
=====================  =================  ==================================================
``index``              ``(B,)`` long      row of the sample in its split (ULGM memory banks)
``input_ids``          ``(B, L_t)`` long  token ids for the language model
``attention_mask``     ``(B, L_t)`` long  1 for real tokens
``token_type_ids``     ``(B, L_t)`` long  segment ids (zeros)
``audio``              ``(B, L_a, D_a)``  float, zero-padded
``audio_lengths``      ``(B,)`` long      true lengths (>= 1)
``audio_mask``         ``(B, L_a)`` bool  True for real steps
``vision``             ``(B, L_v, D_v)``  same for vision
``vision_lengths``     ``(B,)`` long
``vision_mask``        ``(B, L_v)`` bool
``labels``             ``(B,)`` float     human sentiment label
``labels_T`` etc.      ``(B,)`` float     optional unimodal labels (SIMS)
``ids``                list of str        clip ids (not a tensor)
``text_hidden``        ``(B, L_t, H)``    optional: a frozen LM's cached hidden states; pass them
                                          to the text encoder as ``hidden_states`` (its
                                          ``encode_batch(batch)`` does)
=====================  =================  ==================================================

For word-aligned data ``L_a == L_v == L_t``: the audio/vision row of each sub-word token is its
word's row, and special tokens get zero rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from msakit.config_schema import ModalityOptimiserConfig, ModelConfig, TrainConfig
from msakit.errors import ConfigError

#: Checkpoint key of the checksum of the frozen weights a checkpoint leaves out.
FROZEN_CHECKSUM_KEY = "frozen_language_model_checksum"

#: A fine-tuned LM matrix stored as its changed rows: ``<key><suffix>`` holds the row indices
#: (int64), the rows, and the checksum of the pretrained matrix they apply to.
CHANGED_ROWS_SUFFIX = ".changed_rows"
CHANGED_VALUES_SUFFIX = ".changed_values"
BASE_CHECKSUM_SUFFIX = ".pretrained_checksum"

#: Parameter-name fragments that never take weight decay by default (biases and norm weights, as
#: in BERT fine-tuning).
NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def _checksum(value: torch.Tensor) -> torch.Tensor:
    """``(2,)`` float64 sum and sum of squares of a tensor (identifies pretrained weights)."""
    value = value.detach().double().cpu()
    return torch.stack([value.sum(), value.square().sum()])


def takes_no_decay(parameter_name: str) -> bool:
    """Whether a parameter is a bias or a normalisation weight (no weight decay by default)."""
    return any(marker in parameter_name for marker in NO_DECAY_MARKERS)


@dataclass(frozen=True)
class FeatureDims:
    """Input sizes a model is built for: ``audio``/``vision`` feature dims (0 = absent)."""

    audio: int
    vision: int


def require_modalities(dims: FeatureDims, model: str,
                       modalities: tuple[str, ...] = ("audio", "vision"), hint: str = "") -> None:
    """Refuse data without the ``audio``/``vision`` features ``model`` reads (dim 0).

    Raises:
        ConfigError: naming the model, the missing modalities and the data's dims; ``hint``
            (e.g. which model or ``model.modalities`` reads less) is appended.
    """
    missing = [m for m in modalities if getattr(dims, m) <= 0]
    if missing:
        raise ConfigError(
            f"{model} needs {' and '.join(modalities)} features; the data has no "
            f"{' or '.join(missing)} features (feature dims: audio={dims.audio}, "
            f"vision={dims.vision})"
            + (f". {hint}" if hint else "")
        )


def ordered_modalities(value: list[str]) -> list[str]:
    """For a ``model.modalities`` validator: at least one, no duplicates; returned in the order
    text, audio, vision (raises ``ValueError``, which pydantic reports under the key)."""
    if not value:
        raise ValueError("model.modalities must name at least one of text, audio, vision")
    if len(set(value)) != len(value):
        raise ValueError(f"model.modalities has duplicates: {value}")
    return [m for m in ("text", "audio", "vision") if m in value]


def check_loss_weights(weights: dict[str, float], terms: tuple[str, ...], model: str) -> None:
    """Every loss term the model returns needs a weight, and no weight may name another term
    (for a config validator: raises ``ValueError``, which pydantic reports under the key)."""
    missing = sorted(set(terms) - set(weights))
    unknown = sorted(set(weights) - set(terms))
    if missing or unknown:
        raise ValueError(
            f"{model} model.loss_weights: missing {missing}, unknown {unknown}; the terms are "
            f"{list(terms)}"
        )


@dataclass(frozen=True)
class TrainingStage:
    """A pass over the training batches that runs before the main pass in every epoch, with an
    optimiser of its own (:meth:`MSAModel.training_stages`; e.g. MMIM's MMILB stage).

    While it runs the trainer sets ``model.training_stage`` to ``name``; ``forward`` then
    returns only the loss terms this stage minimises (their unweighted sum), and the trainer
    writes their epoch means as ``train_<name>_<term>`` columns of ``epochs.csv``. Every batch
    takes a step (clipped like the main pass's), then all gradients are dropped.

    Attributes:
        name: the stage's name (not ``"main"``, the main pass's).
        parameter_groups: optimiser groups (as :meth:`MSAModel.parameter_groups` returns them)
            of the parameters this stage trains; the main pass's optimiser does not hold them,
            and their gradients from the main pass are dropped after each main step.
        batch_fraction: the share of each epoch's batches the stage reads (the first ones).
    """

    name: str
    parameter_groups: list[dict[str, Any]]
    batch_fraction: float = 1.0


@dataclass
class ModelOutput:
    """What ``forward`` returns.

    Attributes:
        prediction: ``(B,)`` sentiment prediction (the one metrics are computed on).
        losses: named loss terms, each a scalar tensor. The trainer multiplies each by
            ``config.loss_weights[name]`` and sums. Present in training and evaluation alike
            (evaluation reports them).
        extras: anything a user may want to inspect per sample, e.g. gate values ``(B, ...)``
            or unimodal predictions ``(B,)``; tensors with a leading batch dimension.
    """

    prediction: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class MSAModel(nn.Module):
    """Base class. Subclasses set ``name``, ``config_class``, ``paper`` and implement ``forward``.

    Hooks (all optional) let a model do what differs between methods without its own trainer:
    ``on_fit_start`` (see the training split), ``on_epoch_start``, ``on_train_batch_end``
    (called after the optimiser step) and ``on_epoch_end``; ``epoch_statistics`` adds the model's
    own per-epoch numbers (e.g. DMD's mean distillation edges) to the run's ``epochs.csv``.

    A model with ``fits_in_closed_form = True`` has no gradient training: the trainer calls
    :meth:`fit_closed_form` once instead of the epochs (one row in ``epochs.csv``).

    A model whose official loop has more than one optimiser declares the extra passes in
    :meth:`training_stages`; ``training_stage`` names the pass that is running.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    fits_in_closed_form: ClassVar[bool] = False

    def __init__(self, config: ModelConfig, dims: FeatureDims):
        super().__init__()
        self.config = config
        self.dims = dims
        #: the training pass running now: ``"main"`` or a :class:`TrainingStage`'s name
        self.training_stage = "main"

    # -- the one required method -------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- hooks -------------------------------------------------------------------------------
    def on_fit_start(self, train_labels: torch.Tensor) -> None:
        """Called once before training with the ``(N_train,)`` human labels of the train split."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (1-based)."""

    def on_train_batch_end(self, batch: dict[str, Any], output: ModelOutput, epoch: int) -> None:
        """Called after each optimiser step with the batch and its (training-mode) output."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after each training epoch, before validation."""

    def training_stages(self, train: TrainConfig) -> list[TrainingStage]:
        """Extra passes over the training batches, each with its own optimiser, run in this
        order before the main pass in every epoch (default: none)."""
        return []

    def fit_closed_form(self, train_batches: Iterable[dict[str, Any]],
                        valid_batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Fit without gradients (only when ``fits_in_closed_form``), e.g. a ridge regression.

        Args:
            train_batches: every training batch once, on the model's device; the fitted
                weights must come from these.
            valid_batches: the validation batches, for choosing hyper-parameters (e.g. a
                penalty); the test split is never passed.

        Returns:
            Numbers describing the fit, written as ``train_<name>`` columns of ``epochs.csv``;
            ``task`` and ``total`` are the training loss.
        """
        raise NotImplementedError(f"{type(self).__name__} sets fits_in_closed_form but does not "
                                  "implement fit_closed_form")

    def epoch_statistics(self) -> dict[str, float]:
        """Numbers describing the training epoch just finished, called after ``on_epoch_end``.

        Each ``name: value`` becomes a ``train_<name>`` column of the run's ``epochs.csv``.
        """
        return {}

    def run_artifacts(self) -> dict[str, Any]:
        """JSON-serialisable things to save in the run directory after training (e.g. labels)."""
        return {}

    def evaluation_artifacts(self, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """A JSON-serialisable summary of an evaluation from its concatenated per-clip
        ``extras`` (``{name: (N, ...)}``), e.g. mean gate values; saved under ``test`` in the
        training run's ``artifacts.json``. ``{}`` (the default): nothing to summarise."""
        return {}

    # -- optimisation ------------------------------------------------------------------------
    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """Optimiser parameter groups: dicts with ``name``, ``params``, ``lr``, ``weight_decay``.

        The default splits the pretrained language model (``train.lm_lr``,
        ``train.lm_weight_decay``) from the rest (``train.lr``, ``train.weight_decay``), each with
        and without decay (biases and norm weights never decay). A model whose official code
        uses other groups overrides this; the trainer checks that every trainable parameter is
        in exactly one group.
        """
        lm_prefixes = self.language_model_prefixes()
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            is_lm = name.startswith(lm_prefixes) if lm_prefixes else False
            groups.setdefault((is_lm, not takes_no_decay(name)), []).append(parameter)
        out = []
        for (is_lm, decays), params in sorted(groups.items()):
            out.append({
                "params": params,
                "lr": train.lm_lr if is_lm else train.lr,
                "weight_decay": (train.lm_weight_decay if is_lm else train.weight_decay)
                if decays else 0.0,
                "name": f"{'language_model' if is_lm else 'other'}{'' if decays else '/no_decay'}",
            })
        return out

    def language_model_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes that belong to the pretrained language model.

        The trainer gives these the language-model learning rate and weight decay.
        """
        return tuple(
            name + "." for name, module in self.named_modules()
            if getattr(module, "is_pretrained_language_model", False)
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def frozen_state_keys(self) -> set[str]:
        """State-dict keys of pretrained weights that never train, left out of checkpoints.

        Default: everything of the pretrained language model (its parameters and buffers) that
        is not a trainable parameter; empty when the LM is fine-tuned whole.
        """
        prefixes = self.language_model_prefixes()
        if not prefixes:
            return set()
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        frozen = {key for key in self.state_dict()
                  if key.startswith(prefixes) and key not in trainable}
        lm_parameters = {name for name, _ in self.named_parameters() if name.startswith(prefixes)}
        return frozen if lm_parameters & frozen else set()  # buffers alone are not worth it

    def frozen_checksum(self, keys: set[str] | None = None) -> torch.Tensor:
        """``(2,)`` float64: sum and sum of squares of the frozen weights (identifies them).

        Remembered while the weights stay the same tensors, unmodified (same storage and
        version counter: any in-place change, e.g. ``load_state_dict``, bumps it), so saving a
        checkpoint every epoch does not re-read a frozen LM's 22M+ weights each time.
        """
        keys = self.frozen_state_keys() if keys is None else keys
        values = [(key, value) for key, value in self.state_dict().items()
                  if key in keys and value.is_floating_point()]
        fingerprint = tuple((key, value.data_ptr(), value._version) for key, value in values)
        remembered = getattr(self, "_frozen_checksum_memo", None)
        if remembered is not None and remembered[0] == fingerprint:
            return remembered[1].clone()
        total = torch.zeros(2, dtype=torch.float64)
        for _, value in values:
            value = value.detach().double()
            total += torch.stack([value.sum(), value.square().sum()]).cpu()
        self._frozen_checksum_memo = (fingerprint, total.clone())
        return total

    def checkpoint_description(self) -> str:
        """How error messages about checkpoints name this model (e.g. its fine-tuning mode)."""
        return f"{self.name} model"

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint stores: all but :meth:`frozen_state_keys`, plus a checksum
        of those under :data:`FROZEN_CHECKSUM_KEY` when there are any.

        A frozen pretrained LM is rebuilt from its pretrained weights when the model is built, so
        a run with a frozen all-MiniLM-L6-v2 stores a few MB per checkpoint instead of 91 MB.
        """
        frozen = self.frozen_state_keys()
        state = {k: v for k, v in self.state_dict().items() if k not in frozen}
        if frozen:
            state[FROZEN_CHECKSUM_KEY] = self.frozen_checksum(frozen)
        return self._store_changed_rows(state)

    def pretrained_language_model_state(self) -> dict[str, torch.Tensor]:
        """``{state-dict key: pretrained tensor}`` of the LM modules that know their pretrained
        weights (``pretrained_state()``, e.g. :class:`PretrainedTextEncoder`)."""
        reference = {}
        for prefix, module in self.named_modules():
            if getattr(module, "is_pretrained_language_model", False) and \
                    hasattr(module, "pretrained_state"):
                reference.update({f"{prefix}.{key}" if prefix else key: value
                                  for key, value in module.pretrained_state().items()})
        return reference

    def _store_changed_rows(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A fine-tuned LM's matrices as the rows that differ from the pretrained ones.

        Fine-tuning changes only the embedding rows of tokens seen in training (404 of
        all-MiniLM-L6-v2's 30,522 word embeddings on the 229 mosi-demo clips): the rest is
        rebuilt from the pretrained LM at load time, exactly (same values, bit for bit). A matrix
        with more than half its rows changed is stored whole.
        """
        reference = None
        for key in [k for k, v in state.items() if v.dim() == 2 and v.is_floating_point()]:
            if reference is None:
                reference = self.pretrained_language_model_state()
            base = reference.get(key)
            if base is None or base.shape != state[key].shape or base.dtype != state[key].dtype:
                continue
            value = state[key].detach().cpu()
            changed = (value != base).any(dim=1).nonzero().flatten()
            if 2 * changed.numel() > value.shape[0]:
                continue
            del state[key]
            state[key + CHANGED_ROWS_SUFFIX] = changed
            state[key + CHANGED_VALUES_SUFFIX] = value[changed].clone()
            state[key + BASE_CHECKSUM_SUFFIX] = _checksum(base)
        return state

    def _restore_changed_rows(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`_store_changed_rows` (checks the pretrained matrix's checksum)."""
        keys = [k[:-len(CHANGED_ROWS_SUFFIX)] for k in state if k.endswith(CHANGED_ROWS_SUFFIX)]
        if not keys:
            return state
        reference = self.pretrained_language_model_state()
        state = dict(state)
        for key in keys:
            base = reference.get(key)
            if base is None:  # not this model's LM: reported below as unexpected keys
                continue
            rows = state.pop(key + CHANGED_ROWS_SUFFIX)
            values = state.pop(key + CHANGED_VALUES_SUFFIX, None)
            checksum = state.pop(key + BASE_CHECKSUM_SUFFIX, None)
            if values is None or checksum is None:
                raise ValueError(f"checkpoint stores {key!r} as changed rows without their "
                                 f"{'values' if values is None else 'pretrained checksum'}")
            if not torch.allclose(checksum.double().cpu(), _checksum(base), rtol=1e-9, atol=0.0):
                raise ValueError(
                    f"checkpoint was fine-tuned from other language-model weights than this "
                    f"{self.checkpoint_description()}'s ({self.config.language_model!r}) for "
                    f"{key!r}; build the model with the language model it was trained with")
            full = base.clone()
            full[rows.to(torch.long).cpu()] = values.to(full.dtype).cpu()
            state[key] = full
        return state

    def load_checkpoint_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint of :meth:`checkpoint_state_dict` onto this model.

        It must hold exactly the non-frozen weights, and (with frozen weights) the checksum of
        the frozen weights it was trained on: the frozen LM keeps the pretrained weights it was
        built with, and a checksum mismatch (another LM) is an error. A full state dict of the
        same model (e.g. from before frozen weights were left out) is accepted when its frozen
        part equals this model's.

        Raises:
            ValueError: missing or unexpected keys (the first few named), or another frozen LM.
        """
        state = self._restore_changed_rows(dict(state))
        frozen = self.frozen_state_keys()
        checksum = state.pop(FROZEN_CHECKSUM_KEY, None)
        if frozen and checksum is None and frozen <= set(state):
            stored = {k: state.pop(k) for k in frozen}  # a full state dict: compare the LM
            current = self.state_dict()
            if not all(torch.equal(stored[k].to(current[k].device), current[k]) for k in frozen):
                raise ValueError(f"checkpoint was trained on other frozen language-model "
                                 f"weights than this {self.checkpoint_description()}'s")
            checksum = self.frozen_checksum(frozen)
        expected = set(self.state_dict()) - frozen
        unexpected = sorted(set(state) - expected)
        missing = sorted(expected - set(state))
        if unexpected or missing:
            raise ValueError(
                f"checkpoint does not match this {self.checkpoint_description()}: "
                f"{len(missing)} missing keys {missing[:3]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:3]}"
            )
        if frozen:
            if checksum is None:
                raise ValueError(f"checkpoint has no {FROZEN_CHECKSUM_KEY!r}: it was not written "
                                 f"by checkpoint_state_dict() of a {self.checkpoint_description()}"
                                 " with a frozen language model")
            if not torch.allclose(checksum.double().cpu(), self.frozen_checksum(frozen),
                                  rtol=1e-9, atol=0.0):
                raise ValueError(
                    "checkpoint was trained on other frozen language-model weights than this "
                    f"{self.checkpoint_description()}'s ({self.config.language_model!r}); build "
                    "the model with the language model the checkpoint was trained with"
                )
        self.load_state_dict(state, strict=not frozen)

    # -- reporting ---------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable}


def check_batch_sequence(batch: dict[str, Any], key: str, feature_dim: int) -> torch.Tensor:
    x = batch.get(key)
    if x is None:
        raise KeyError(f"batch has no {key!r}; the model needs it")
    if x.dim() != 3 or x.shape[-1] != feature_dim:
        raise ValueError(f"batch[{key!r}] must be (B, L, {feature_dim}), got {tuple(x.shape)}")
    return x


def modality_parameter_groups(
    model: MSAModel, train: TrainConfig, audio_modules: Sequence[str],
    vision_modules: Sequence[str],
) -> list[dict[str, Any]]:
    """Self-MM's five Adam groups (``trains/multiTask/SELF_MM.py`` of thuiar/Self-MM):
    ``language_model`` and ``language_model/no_decay`` (``lm_lr``; ``lm_weight_decay`` / 0),
    ``audio`` (``audio_lr``, ``audio_weight_decay``), ``vision`` (the same for vision), ``other``
    (``lr``, ``weight_decay``). ``audio_modules``/``vision_modules`` are attribute names of the
    sub-networks. With ``exempt_biases_from_decay`` the last three split into ``.../no_decay``
    groups too.
    """
    config: ModalityOptimiserConfig = model.config  # type: ignore[assignment]
    settings = {
        "language_model": (train.lm_lr, train.lm_weight_decay),
        "audio": (config.audio_lr or train.lr, train.weight_decay
                  if config.audio_weight_decay is None else config.audio_weight_decay),
        "vision": (config.vision_lr or train.lr, train.weight_decay
                   if config.vision_weight_decay is None else config.vision_weight_decay),
        "other": (train.lr, train.weight_decay),
    }
    prefixes = {
        "language_model": model.language_model_prefixes(),
        "audio": tuple(f"{m}." for m in audio_modules),
        "vision": tuple(f"{m}." for m in vision_modules),
    }
    groups: dict[str, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        owner = next((key for key, p in prefixes.items() if p and name.startswith(p)), "other")
        lr, decay = settings[owner]
        exempt = takes_no_decay(name) and (owner == "language_model"
                                           or config.exempt_biases_from_decay)
        group_name = owner + ("/no_decay" if exempt else "")
        group = groups.setdefault(group_name, {"name": group_name, "params": [], "lr": lr,
                                               "weight_decay": 0.0 if exempt else decay})
        group["params"].append(parameter)
    return list(groups.values())
