"""Data-parallel training over several processes: ``torchrun --nproc_per_node N -m msakit train``.

torchrun starts N copies of the command and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` joins them into one process group (NCCL on CUDA, gloo on CPU). Then:

* ``train.batch_size`` is the *global* batch: each process takes ``batch_size / N`` clips of it
  (a ``DistributedSampler`` deals the epoch's shuffled order round-robin, so the N local batches
  of a step are exactly the clips one process would take with the full batch), and
  ``DistributedDataParallel`` averages the gradients.
* Evaluation is not sharded: every process scores the whole split with the same weights, so
  every clip counts exactly once, metrics are exact, and all processes take the same
  checkpoint-selection and early-stopping decisions without further communication.
* Process 0 alone writes the run folder (configs, ``epochs.csv``, checkpoints, results).
* Model hooks (``on_train_batch_end``, e.g. Self-MM's ULGM label bank, DMD's edge sums) see the
  global batch: :meth:`Distributed.gather_for_hooks` gathers the batch's per-clip labels and
  indices and the output's per-clip tensors (scalars and vectors) from every process, so each
  process applies the same update and the hook's state stays identical everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from msakit.models.base import ModelOutput, MSAModel

#: batch keys with one value per clip that hooks may read (sequence tensors are not gathered)
HOOK_BATCH_KEYS = ("index", "labels", "audio_lengths", "vision_lengths")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world_size`` (1 = a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """``value`` of process 0, on every process."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def gather_for_hooks(self, batch: dict[str, Any],
                         output: ModelOutput) -> tuple[dict[str, Any], ModelOutput]:
        """The global batch as a hook needs it: per-clip batch values (``index``, labels,
        lengths, ``ids``) and the output's prediction and per-clip extras with at most two
        dims, concatenated over processes in rank order. Loss terms are not gathered."""
        if not self.enabled:
            return batch, output
        size = output.prediction.shape[0]
        gathered: dict[str, Any] = {
            key: self._all_gather(value) for key, value in batch.items()
            if (key in HOOK_BATCH_KEYS or key.startswith("labels_"))
            and isinstance(value, torch.Tensor)
        }
        if "ids" in batch:
            ids: list[list[str]] = [[] for _ in range(self.world_size)]
            dist.all_gather_object(ids, list(batch["ids"]))
            gathered["ids"] = [clip for part in ids for clip in part]
        extras = {
            key: self._all_gather(value) for key, value in output.extras.items()
            if isinstance(value, torch.Tensor) and 1 <= value.dim() <= 2
            and value.shape[0] == size
        }
        return gathered, ModelOutput(prediction=self._all_gather(output.prediction),
                                     losses={}, extras=extras)


_CURRENT = Distributed()


def current() -> Distributed:
    """This process's place in the process group (a single process when not under torchrun)."""
    return _CURRENT


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str = "auto") -> Distributed:
    """Join torchrun's process group (once); a no-op single process when not under torchrun."""
    global _CURRENT
    if not launched_by_torchrun() or _CURRENT.enabled:
        return _CURRENT
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto"
                                                  and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    _CURRENT = Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=local_rank)
    return _CURRENT


def shutdown() -> None:
    global _CURRENT
    if _CURRENT.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = Distributed()


def model_overrides_hook(model: MSAModel, hook: str) -> bool:
    """True when ``model``'s class replaces the base class's (empty) ``hook``."""
    return getattr(type(model), hook) is not getattr(MSAModel, hook)
