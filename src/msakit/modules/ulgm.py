"""Self-supervised multi-task learning of Self-MM (Yu et al., AAAI 2021), also used by MMILN.

Three pieces:

- :class:`SentimentHead`: Dropout -> Linear -> ReLU (the representation ``F*_s``) -> Linear ->
  ReLU -> Linear 1 (the prediction ``ŷ_s``), one per task (fusion ``m`` and each modality).
- :class:`UnimodalLabelGenerator` (ULGM): memory banks of every training sample's ``F*_s`` and
  generated label ``y_s``, positive/negative class centres, the relative distance ``α``, the label
  offset and the momentum update (MMILN eqs. 29-34; Self-MM eqs. 6-12).
- :func:`weighted_l1_loss` and :class:`ULGMHooks`: the weighted multi-task loss
  ``mean_i w_i^s |ŷ_i^s - y_i^s|`` with ``w^s = tanh(|y^s - y^m|)`` and the model hooks that drive
  ULGM from the generic trainer.

The banks are plain tensors, not module buffers: they are training state of one fit, sized by
the training split, and are not part of a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msakit.modules.dropout import Dropout
from msakit.modules.gates import gate_values
from msakit.modules.precision import full_precision


class SentimentHead(nn.Module):
    """Self-MM's post-fusion / post-unimodal head.

    Shapes:
        ``x (B, in_dim)`` -> ``(prediction (B,), representation F* (B, hidden_dim))``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.project = nn.Linear(in_dim, hidden_dim)
        self.hidden = nn.Linear(hidden_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        representation = F.relu(self.project(self.dropout(x)))
        prediction = self.out(F.relu(self.hidden(representation))).squeeze(-1)
        return prediction, representation


# --------------------------------------------------------------------------------------------
# The ULGM formulas as pure functions (unit-tested on hand-made numbers)
# --------------------------------------------------------------------------------------------

@full_precision
def relative_distance(
    features: torch.Tensor, positive_centre: torch.Tensor, negative_centre: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """``α = (D_n - D_p) / (D_p + ε)`` (eqs. 29-31).

    The paper divides both L2 distances by ``sqrt(d)``; the official code does not. The factor
    cancels in the ratio (up to ``ε``), so the plain distances are used.

    Shapes: ``features (B, d)``, centres ``(d,)`` -> ``(B,)``.
    """
    d_pos = torch.linalg.vector_norm(features - positive_centre, dim=-1)
    d_neg = torch.linalg.vector_norm(features - negative_centre, dim=-1)
    return (d_neg - d_pos) / (d_pos + eps)


def offset_label(
    fusion_label: torch.Tensor, alpha_unimodal: torch.Tensor, alpha_fusion: torch.Tensor,
    limit: float, eps: float = 1e-8,
) -> torch.Tensor:
    """New unimodal label from the two relations of eqs. 32-33, averaged (eq. 34).

    ``ŷ_s = ½ (α_s / (α_m + ε)) y_m + ½ (y_m + α_s - α_m)``, clipped to ``[-limit, limit]`` as the
    official implementation does (``H``; 3 for MOSI/MOSEI, 1 for SIMS). Shapes: all ``(B,)``.
    """
    ratio = alpha_unimodal / (alpha_fusion + eps)
    new = 0.5 * ratio * fusion_label + 0.5 * (fusion_label + alpha_unimodal - alpha_fusion)
    return new.clamp(-limit, limit)


def momentum_update(previous: torch.Tensor, new: torch.Tensor, epoch: int) -> torch.Tensor:
    """``y_s <- (n-1)/(n+1) y_s + 2/(n+1) ŷ_s`` at epoch ``n`` (Self-MM's momentum update)."""
    if epoch < 1:
        raise ValueError(f"momentum_update: epoch is 1-based, got {epoch}")
    return (epoch - 1) / (epoch + 1) * previous + 2.0 / (epoch + 1) * new


def weighted_l1_loss(
    prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean_i w_i |ŷ_i - y_i|`` (all ``(B,)``); ``weight=None`` means ``w = 1``."""
    error = (prediction - target).abs()
    return error.mean() if weight is None else (weight * error).mean()


class UnimodalLabelGenerator:
    """ULGM: generates a label per training sample for each unimodal task.

    Args:
        feature_dims: size of ``F*`` per task, e.g. ``{"m": 128, "t": 64, "a": 16, "v": 32}``.
            The fusion task (``fusion_key``) must be present; its labels are always the human
            labels, every other key gets generated labels.
        fusion_key: the key of the multimodal task.
        label_limit: ``H``; generated labels are clipped to ``[-H, H]``.
        eps: the small constant of eqs. 31 and 34.
        exclude_zero: ``False`` (the authors' Self-MM): the positive centre averages the rows
            whose current label is ``>= 0``; ``True`` (MMSA's ``excludeZero``, which its TETFN
            and Self-MM configs set): ``> 0``, so a row labelled exactly 0 is in neither centre.

    Per training batch (:meth:`step`): from epoch 2 the batch's labels are updated from its
    detached ``F*`` and the *current* centres; the features are written into the banks; the
    centres are recomputed over the whole bank. The positive centre averages bank rows whose
    current label is ``>= 0`` (``> 0`` with ``exclude_zero``) and the negative centre rows with
    label ``< 0`` (the official implementation; 0 counts as positive). A class with no rows
    keeps its previous centre.
    """

    def __init__(
        self, feature_dims: Mapping[str, int], fusion_key: str = "m", label_limit: float = 3.0,
        eps: float = 1e-8, exclude_zero: bool = False,
    ):
        if fusion_key not in feature_dims:
            raise ValueError(f"ULGM: feature_dims {dict(feature_dims)} lacks the fusion task "
                             f"{fusion_key!r}")
        if len(feature_dims) < 2:
            raise ValueError("ULGM: needs at least one unimodal task besides the fusion task")
        self.feature_dims = dict(feature_dims)
        self.fusion_key = fusion_key
        self.unimodal_keys = [k for k in feature_dims if k != fusion_key]
        self.label_limit = float(label_limit)
        self.eps = eps
        self.exclude_zero = exclude_zero
        self.labels: dict[str, torch.Tensor] = {}
        self.features: dict[str, torch.Tensor] = {}
        self.centres: dict[str, dict[str, torch.Tensor]] = {}
        self._ids: list[str | None] = []
        self._pending_ids: list[tuple[torch.Tensor, list[str]]] = []
        self.history: list[dict[str, Any]] = []
        self.label_updates = 0
        self.epoch = 0

    # -- state ---------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return bool(self.labels)

    @property
    def n_samples(self) -> int:
        return 0 if not self.initialised else int(self.labels[self.fusion_key].shape[0])

    def reset(self, human_labels: torch.Tensor) -> None:
        """Allocate the banks for ``N`` training samples; every task's label = the human label.

        Shapes: ``human_labels (N,)``.
        """
        human = torch.as_tensor(human_labels).detach().reshape(-1).clone()
        human = human.to(torch.float64 if human.dtype == torch.float64 else torch.float32)
        if human.numel() == 0:
            raise ValueError("ULGM: the training split is empty")
        if not torch.isfinite(human).all():
            raise ValueError("ULGM: the training labels contain NaN or inf")
        n = human.shape[0]
        self.labels = {key: human.clone() for key in self.feature_dims}
        self.features = {key: human.new_zeros(n, dim) for key, dim in self.feature_dims.items()}
        self.centres = {
            key: {"pos": human.new_zeros(dim), "neg": human.new_zeros(dim)}
            for key, dim in self.feature_dims.items()
        }
        self._ids = [None] * n
        self._pending_ids = []
        self.history = []
        self.label_updates = 0
        self.epoch = 0

    def _to(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Move the banks to ``device``; ``dtype`` float64 promotes them (a float64 model keeps
        float64 labels; anything else stays float32, also under mixed precision)."""
        current = self.labels[self.fusion_key]
        dtype = torch.float64 if dtype == torch.float64 else current.dtype
        if current.device == device and current.dtype == dtype:
            return
        self.labels = {k: v.to(device, dtype) for k, v in self.labels.items()}
        self.features = {k: v.to(device, dtype) for k, v in self.features.items()}
        self.centres = {k: {c: v.to(device, dtype) for c, v in cs.items()}
                        for k, cs in self.centres.items()}

    def _check_index(self, index: torch.Tensor) -> torch.Tensor:
        """``index`` as a flat long tensor. Its range is checked here only on the CPU, where that
        costs no host-device sync; on an accelerator an out-of-range row fails in the indexing
        kernel itself."""
        if not self.initialised:
            raise RuntimeError("ULGM: call reset(train_labels) (the model's on_fit_start) first")
        index = torch.as_tensor(index).reshape(-1).long()
        if index.device.type == "cpu" and index.numel() and (
                int(index.min()) < 0 or int(index.max()) >= self.n_samples):
            raise IndexError(
                f"ULGM: batch['index'] must be rows of the training split (0..{self.n_samples - 1}),"
                f" got values in [{int(index.min())}, {int(index.max())}]"
            )
        return index

    # -- reading -------------------------------------------------------------------------------
    def targets(self, key: str, index: torch.Tensor) -> torch.Tensor:
        """Current label of task ``key`` for training rows ``index``: ``(B,)``."""
        index = self._check_index(index)
        self._to(index.device)
        return self.labels[key][index].clone()

    def loss_weights(self, key: str, index: torch.Tensor) -> torch.Tensor:
        """``tanh(|y_s - y_m|)`` for training rows ``index`` (1 for the fusion task): ``(B,)``."""
        index = self._check_index(index)
        self._to(index.device)
        if key == self.fusion_key:
            return torch.ones(index.shape[0], device=index.device)
        return torch.tanh((self.labels[key][index] - self.labels[self.fusion_key][index]).abs())

    # -- writing -------------------------------------------------------------------------------
    def step(
        self, features: Mapping[str, torch.Tensor], index: torch.Tensor, epoch: int,
        ids: Sequence[str] | None = None,
    ) -> None:
        """One training batch: update labels (epoch >= 2), write features, recompute centres.

        Shapes: ``features[key] (B, feature_dims[key])`` for every task, ``index (B,)``.
        """
        index = self._check_index(index)
        missing = set(self.feature_dims) - set(features)
        if missing:
            raise KeyError(f"ULGM.step: features missing for task(s) {sorted(missing)}")
        detached = {}
        for key, dim in self.feature_dims.items():
            value = features[key].detach()
            if value.dim() != 2 or value.shape != (index.shape[0], dim):
                raise ValueError(f"ULGM.step: features[{key!r}] must be ({index.shape[0]}, {dim}),"
                                 f" got {tuple(value.shape)}")
            detached[key] = value
        device = detached[self.fusion_key].device
        index = index.to(device)
        self._to(device, detached[self.fusion_key].dtype)
        dtype = self.labels[self.fusion_key].dtype
        detached = {key: value.to(dtype) for key, value in detached.items()}
        self.epoch = int(epoch)
        if epoch > 1:
            self.update_labels(detached, index, epoch)
        for key, value in detached.items():
            self.features[key][index] = value
        self.update_centres()
        if ids is not None:  # resolved to rows in record_epoch, off the per-batch path
            self._pending_ids.append((index, list(ids)))

    def update_labels(self, features: Mapping[str, torch.Tensor], index: torch.Tensor,
                      epoch: int) -> None:
        """Eqs. 29-34 plus the momentum update for the rows ``index`` of every unimodal task."""
        fusion_label = self.labels[self.fusion_key][index]
        alpha_fusion = relative_distance(
            features[self.fusion_key], self.centres[self.fusion_key]["pos"],
            self.centres[self.fusion_key]["neg"], self.eps,
        )
        for key in self.unimodal_keys:
            alpha = relative_distance(
                features[key], self.centres[key]["pos"], self.centres[key]["neg"], self.eps
            )
            new = offset_label(fusion_label, alpha, alpha_fusion, self.label_limit, self.eps)
            self.labels[key][index] = momentum_update(self.labels[key][index], new, epoch)
        self.label_updates += 1

    def update_centres(self) -> None:
        """Class centres as masked means (no data-dependent shapes, no host sync); a class with
        no rows keeps its previous centre."""
        for key in self.feature_dims:
            labels, bank = self.labels[key], self.features[key]
            positive = labels > 0 if self.exclude_zero else labels >= 0
            for name, rows in (("pos", positive), ("neg", labels < 0)):
                weights = rows.to(bank.dtype)
                count = weights.sum()
                mean = (weights @ bank) / count.clamp_min(1.0)
                self.centres[key][name] = torch.where(count > 0, mean, self.centres[key][name])

    # -- checkpointing -------------------------------------------------------------------------
    STATE_PREFIX = "__ulgm__."

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Banks, centres and counters as flat tensors (for a model checkpoint); ``{}`` if unset."""
        if not self.initialised:
            return {}
        p = self.STATE_PREFIX
        state = {f"{p}labels.{k}": v.clone() for k, v in self.labels.items()}
        state.update({f"{p}features.{k}": v.clone() for k, v in self.features.items()})
        for key, centres in self.centres.items():
            state.update({f"{p}centres.{key}.{c}": v.clone() for c, v in centres.items()})
        state[f"{p}counters"] = torch.tensor([self.epoch, self.label_updates])
        return state

    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` saved (keys without the prefix are ignored)."""
        p = self.STATE_PREFIX
        mine = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if not mine:
            return
        expected = {f"labels.{k}" for k in self.feature_dims}
        if not expected <= set(mine):
            raise KeyError(f"ULGM checkpoint state lacks {sorted(expected - set(mine))}")
        self.labels = {k: mine[f"labels.{k}"].clone().float() for k in self.feature_dims}
        self.features = {k: mine[f"features.{k}"].clone().float() for k in self.feature_dims}
        self.centres = {k: {c: mine[f"centres.{k}.{c}"].clone().float() for c in ("pos", "neg")}
                        for k in self.feature_dims}
        self.epoch, self.label_updates = (int(x) for x in mine["counters"].tolist())
        if len(self._ids) != self.n_samples:
            self._ids = [None] * self.n_samples

    # -- inspection ----------------------------------------------------------------------------
    def drift(self) -> dict[str, dict[str, float]]:
        """Per unimodal task: how far the generated labels are from the human label."""
        human = self.labels[self.fusion_key]
        summary = {}
        for key in self.unimodal_keys:
            delta = self.labels[key] - human
            flipped = ((self.labels[key] >= 0) != (human >= 0)).float()
            summary[key] = {
                "mean_abs_drift": float(delta.abs().mean()),
                "mean_drift": float(delta.mean()),
                "max_abs_drift": float(delta.abs().max()),
                "sign_flip_fraction": float(flipped.mean()),
            }
        return summary

    @property
    def ids(self) -> list[str | None]:
        """Clip id of each bank row (``None`` until a training batch held the row)."""
        self._resolve_ids()
        return self._ids

    def _resolve_ids(self) -> None:
        for index, ids in self._pending_ids:
            for row, clip_id in zip(index.tolist(), ids):
                self._ids[row] = str(clip_id)
        self._pending_ids = []

    def record_epoch(self, epoch: int) -> None:
        self._resolve_ids()
        if self.initialised:
            self.history.append({"epoch": int(epoch), **self.drift()})

    def artifacts(self) -> dict[str, Any]:
        """JSON-serialisable labels, drift summary and per-epoch drift history."""
        if not self.initialised:
            return {}
        self._resolve_ids()
        human = self.labels[self.fusion_key].cpu().tolist()
        rows = []
        for i, y in enumerate(human):
            row: dict[str, Any] = {"index": i, "id": self.ids[i], "human": y}
            for key in self.unimodal_keys:
                row[key] = float(self.labels[key][i])
            rows.append(row)
        return {
            "tasks": self.unimodal_keys,
            "labels_epoch": self.epoch,
            "label_limit": self.label_limit,
            "label_updates": self.label_updates,
            "drift": self.drift(),
            "drift_by_epoch": self.history,
            "labels": rows,
        }


class ULGMHooks:
    """Mixin for an :class:`~msakit.models.base.MSAModel` trained with ULGM.

    The model sets ``self.ulgm`` (a :class:`UnimodalLabelGenerator`) and, in ``forward``, puts the
    representation of each task in ``extras["feature_<key>"]`` and calls
    :meth:`multitask_losses`.
    """

    ulgm: UnimodalLabelGenerator

    def on_fit_start(self, train_labels: torch.Tensor) -> None:
        self.ulgm.reset(train_labels)

    def on_train_batch_end(self, batch: dict[str, Any], output, epoch: int) -> None:
        features = {key: output.extras[f"feature_{key}"] for key in self.ulgm.feature_dims}
        self.ulgm.step(features, batch["index"], epoch, ids=batch.get("ids"))

    def on_epoch_end(self, epoch: int) -> None:
        self.ulgm.record_epoch(epoch)

    def run_artifacts(self) -> dict[str, Any]:
        return {"generated_labels": self.ulgm.artifacts()}

    def evaluation_artifacts(self, extras: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Test-split summary (the runner stores it in ``artifacts.json`` under ``test``): mean
        and std of each unimodal prediction ``pred_*`` and of any gate value ``gate_*``."""
        summary = {}
        for name, value in sorted(extras.items()):
            if name.startswith(("pred_", "gate_")) and value.numel():
                value = value.float()
                summary[name] = {"mean": float(value.mean()),
                                 "std": float(value.std()) if value.numel() > 1 else 0.0}
        if gates := gate_values(dict(extras)):
            summary["gate_values"] = gates  # per-clip gate means, drawn by msakit report
        return summary

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights plus ULGM's banks, so that a resumed run continues the same labels (and the
        selected checkpoint carries the labels of its epoch)."""
        return {**self.state_dict(), **self.ulgm.state_tensors()}

    def load_checkpoint_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        prefix = UnimodalLabelGenerator.STATE_PREFIX
        self.ulgm.load_state_tensors(state)
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)})

    def multitask_losses(
        self, batch: dict[str, Any], predictions: Mapping[str, torch.Tensor],
        fusion_loss: str = "l1",
    ) -> dict[str, torch.Tensor]:
        """Loss terms ``task`` (fusion head) and ``task_<key>`` (each unimodal head).

        In training (``self.training`` and ULGM initialised) the unimodal targets are the
        generated labels of the batch's training rows and the weights ``tanh(|y_s - y_m|)``.
        Otherwise (evaluation, where ``index`` refers to another split, or a model used outside
        the trainer) the targets are the human label, as in epoch 1, so the weights are 0.
        """
        human = batch["labels"].float().reshape(-1)
        fusion_pred = predictions[self.ulgm.fusion_key]
        if fusion_loss == "l1":
            losses = {"task": weighted_l1_loss(fusion_pred, human)}
        elif fusion_loss == "mse":
            losses = {"task": F.mse_loss(fusion_pred, human)}
        else:
            raise ValueError(f"fusion_loss must be 'l1' or 'mse', got {fusion_loss!r}")
        use_generated = self.training and self.ulgm.initialised  # type: ignore[attr-defined]
        for key in self.ulgm.unimodal_keys:
            if use_generated:
                index = batch["index"].to(human.device)
                target = self.ulgm.targets(key, index).to(human.device)
                weight = self.ulgm.loss_weights(key, index).to(human.device)
            else:
                target, weight = human, torch.zeros_like(human)
            losses[f"task_{key}"] = weighted_l1_loss(predictions[key], target, weight)
        return losses
