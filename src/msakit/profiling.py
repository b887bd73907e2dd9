"""Cost of a model: parameters, FLOPs, peak memory and latency on a synthetic batch.

Used by ``msakit profile`` and ``benchmarks/profile_models.py``. What is measured, and how:

* **Parameters**: :meth:`MSAModel.parameter_counts` (total and trainable), and how many of them
  belong to the pretrained language model (:meth:`MSAModel.language_model_prefixes`).
* **FLOPs per sample**: :class:`torch.utils.flop_counter.FlopCounterMode` around one forward in
  evaluation mode (dropout off) with autograd enabled, so that PyTorch's fused inference fast
  paths (which the counter does not see) are not taken; divided by the batch size. The train
  figure is forward + backward of the same batch. The counter counts matrix products and
  attention (2 FLOPs per multiply-add); element-wise work is not counted.
* **Latency**: median wall time per batch over ``repeats`` runs after one warm-up run;
  inference under :func:`torch.inference_mode`; a training step is forward, the weighted loss
  (``config.model.loss_weights``), backward and an Adam step.
* **Peak memory** of one inference batch and of one training step.
  On CUDA: :func:`torch.cuda.max_memory_allocated` during the step (absolute: weights, optimizer
  state, gradients and activations), and the extra over what was allocated before the step.
  On CPU: each measurement runs in a **fresh process** (so memory freed by an earlier step cannot
  be silently reused and hide the cost), the kernel's peak-RSS mark is reset just before the step
  (``/proc/self/clear_refs``; where that is unavailable, RSS is sampled every millisecond with
  psutil), and the step's figure is the peak RSS during the step minus the RSS before it (the
  absolute peak, which includes the interpreter and libraries, is reported too). The training
  step measured is the *first* one, so it includes the creation of gradients and Adam state.
"""

from __future__ import annotations

import gc
import multiprocessing
import queue as queue_module
import re
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from msakit.config import ExperimentConfig, build_config
from msakit.models import FeatureDims, MSAModel, create_model


@dataclass(frozen=True)
class SyntheticShape:
    """The synthetic batch: ``batch_size`` clips of the given lengths and feature sizes."""

    batch_size: int = 32
    text_len: int = 50
    audio_len: int = 50
    vision_len: int = 50
    audio_dim: int = 74
    vision_dim: int = 47


@dataclass
class ProfileResult:
    """One model's figures (memory in MiB, latency in milliseconds per batch)."""

    model: str
    device: str
    batch_size: int
    params_total: int
    params_trainable: int
    params_language_model: int
    flops_inference_per_sample: float
    flops_train_per_sample: float
    latency_inference_ms: float | None
    latency_train_ms: float | None
    memory_inference_peak_mib: float | None
    memory_inference_extra_mib: float | None
    memory_train_peak_mib: float | None
    memory_train_extra_mib: float | None
    memory_method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def feature_dims_for(config: ExperimentConfig, shape: SyntheticShape) -> FeatureDims:
    """Audio/vision sizes as the trainer would give them: 0 for modalities the data omits."""
    modalities = config.data.modalities
    return FeatureDims(
        audio=shape.audio_dim if "audio" in modalities else 0,
        vision=shape.vision_dim if "vision" in modalities else 0,
    )


def synthetic_batch(
    shape: SyntheticShape,
    vocab_size: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """A batch of the documented dict (:mod:`msakit.models.base`) with random content.

    Token ids are drawn from ``[1000, vocab_size)`` (ordinary word pieces for BERT-style
    vocabularies); every sequence has its full length; labels are uniform in [-3, 3].
    """
    generator = torch.Generator().manual_seed(seed)
    b = shape.batch_size
    low = min(1000, vocab_size - 1)
    batch: dict[str, Any] = {
        "index": torch.arange(b),
        "input_ids": torch.randint(low, vocab_size, (b, shape.text_len), generator=generator),
        "attention_mask": torch.ones(b, shape.text_len, dtype=torch.long),
        "token_type_ids": torch.zeros(b, shape.text_len, dtype=torch.long),
        "audio": torch.randn(b, shape.audio_len, max(shape.audio_dim, 1), generator=generator),
        "audio_lengths": torch.full((b,), shape.audio_len, dtype=torch.long),
        "audio_mask": torch.ones(b, shape.audio_len, dtype=torch.bool),
        "vision": torch.randn(b, shape.vision_len, max(shape.vision_dim, 1), generator=generator),
        "vision_lengths": torch.full((b,), shape.vision_len, dtype=torch.long),
        "vision_mask": torch.ones(b, shape.vision_len, dtype=torch.bool),
        "labels": torch.rand(b, generator=generator) * 6 - 3,
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["ids"] = [f"synthetic$_${i}" for i in range(b)]
    return batch


def vocabulary_size(config: ExperimentConfig) -> int:
    from msakit.lm import load_tokenizer

    return len(load_tokenizer(config.model.language_model))


# ------------------------------------------------------------------------------------------------
# The individual measurements (each works on any MSAModel and batch)
# ------------------------------------------------------------------------------------------------

def weighted_loss(model: MSAModel, output) -> torch.Tensor:
    """``sum(loss_weights[k] * term)``, as the trainer computes it."""
    weights = model.config.loss_weights
    missing = set(output.losses) - set(weights)
    if missing:
        raise ValueError(
            f"model {model.name!r} returns loss terms {sorted(missing)} without a weight in "
            "model.loss_weights"
        )
    if not output.losses:
        raise ValueError(f"model {model.name!r} returned no loss terms for a labelled batch")
    return sum(weights[name] * term for name, term in output.losses.items())


def count_flops(model: MSAModel, batch: dict[str, Any], train: bool = False) -> int:
    """Total FLOPs of one forward (``train=True``: forward + backward) on ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()  # dropout off; autograd stays on so fused inference kernels are not used
    try:
        counter = FlopCounterMode(display=False)
        with torch.enable_grad(), counter:
            output = model(batch)
            if train:
                weighted_loss(model, output).backward()
        model.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(model: MSAModel) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(parameters, lr=1e-5)


def train_step(model: MSAModel, batch: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    model.train()
    loss = weighted_loss(model, model(batch))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def inference_step(model: MSAModel, batch: dict[str, Any]) -> None:
    model.eval()
    with torch.inference_mode():
        model(batch)


def median_latency_ms(step, device: torch.device, repeats: int) -> float:
    """Median wall time of ``step()`` in ms over ``repeats`` runs, after one warm-up run."""
    step()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


# -- memory ---------------------------------------------------------------------------------------

_MIB = 1024.0 * 1024.0


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class _RssSampler:
    """Fallback: sample this process's RSS every millisecond in a thread; keep the maximum."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def measure_cpu_memory(step) -> tuple[float, float, str]:
    """(peak RSS during ``step()``, peak minus RSS before, method) in MiB, for this process."""
    gc.collect()
    if _reset_peak_rss():
        before = _status_kib("VmRSS")
        step()
        peak = _status_kib("VmHWM")
        return peak / 1024.0, (peak - before) / 1024.0, "cpu-rss(clear_refs)"
    import psutil

    before = psutil.Process().memory_info().rss
    with _RssSampler() as sampler:
        step()
    return sampler.peak / _MIB, (sampler.peak - before) / _MIB, "cpu-rss(sampled 1ms)"


def measure_cuda_memory(step, device: torch.device) -> tuple[float, float, str]:
    """(max allocated during ``step()``, that minus allocated before, method) in MiB."""
    _synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    _synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / _MIB, (peak - before) / _MIB, "cuda-max-allocated"


def _memory_worker(model_name, overrides, shape, mode, queue) -> None:
    """Runs in a fresh process: build the model, measure one step's memory, report."""
    try:
        torch.set_num_threads(1)
        config = build_config(model_name, overrides)
        torch.manual_seed(0)
        model = create_model(config.model, feature_dims_for(config, shape))
        batch = synthetic_batch(shape, vocabulary_size(config))
        if mode == "train":
            optimizer = make_optimizer(model)
            result = measure_cpu_memory(lambda: train_step(model, batch, optimizer))
        else:
            result = measure_cpu_memory(lambda: inference_step(model, batch))
        queue.put(("ok", result))
    except BaseException as err:  # report any failure to the parent rather than hang it
        queue.put(("error", f"{type(err).__name__}: {err}"))


def measure_cpu_memory_isolated(
    model_name: str, overrides: list[str], shape: SyntheticShape, mode: str
) -> tuple[float, float, str]:
    """:func:`measure_cpu_memory` of one ``mode`` ("train"/"inference") step in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_memory_worker, args=(model_name, overrides, shape, mode, queue)
    )
    process.start()
    while True:
        try:
            status, payload = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not process.is_alive():  # killed (e.g. out of memory) before it could report
                raise RuntimeError(
                    f"memory measurement of {model_name} ({mode}) died with exit code "
                    f"{process.exitcode}"
                ) from None
    process.join()
    if status != "ok":
        raise RuntimeError(f"memory measurement of {model_name} ({mode}) failed: {payload}")
    return payload


# ------------------------------------------------------------------------------------------------
# Everything for one registered model
# ------------------------------------------------------------------------------------------------

def profile_model(
    model_name: str,
    overrides: list[str] | None = None,
    shape: SyntheticShape = SyntheticShape(),
    repeats: int = 5,
    device: str = "auto",
    memory: bool = True,
    label: str | None = None,
) -> ProfileResult:
    """Build ``model_name`` from its config (with ``overrides``) and measure it.

    Args:
        model_name: a registered model.
        overrides: ``section.key=value`` strings (as ``--set``).
        shape: the synthetic batch.
        repeats: timed runs per latency figure (0: no latency figures).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        memory: measure peak memory (on CPU this starts two fresh processes).
        label: the name shown in the table (default: the model name).
    """
    overrides = list(overrides or [])
    torch_device = resolve_device(device)
    config = build_config(model_name, overrides)
    torch.manual_seed(0)
    model = create_model(config.model, feature_dims_for(config, shape)).to(torch_device)
    batch = synthetic_batch(shape, vocabulary_size(config), device=torch_device)
    counts = model.parameter_counts()
    language_model_prefixes = model.language_model_prefixes()
    language_model_params = sum(
        p.numel() for n, p in model.named_parameters()
        if language_model_prefixes and n.startswith(language_model_prefixes)
    )

    flops_inference = count_flops(model, batch, train=False) / shape.batch_size
    # a closed-form model (the probe) has no backward: its training pass is a forward pass over
    # the clips plus one solve, so train FLOPs are the forward's and no train step is timed
    closed_form = model.fits_in_closed_form
    flops_train = flops_inference if closed_form else (
        count_flops(model, batch, train=True) / shape.batch_size)

    memory_figures: tuple[Any, Any, Any, Any] = (None, None, None, None)
    method = "not measured"
    if memory and torch_device.type == "cuda":
        inf_peak, inf_extra, method = measure_cuda_memory(
            lambda: inference_step(model, batch), torch_device)
        train_peak = train_extra = None
        if not closed_form:
            optimizer = make_optimizer(model)
            train_peak, train_extra, method = measure_cuda_memory(
                lambda: train_step(model, batch, optimizer), torch_device)
            del optimizer
        memory_figures = (inf_peak, inf_extra, train_peak, train_extra)
    elif memory:
        inf_peak, inf_extra, method = measure_cpu_memory_isolated(
            model_name, overrides, shape, "inference")
        train_peak = train_extra = None
        if not closed_form:
            train_peak, train_extra, method = measure_cpu_memory_isolated(
                model_name, overrides, shape, "train")
        memory_figures = (inf_peak, inf_extra, train_peak, train_extra)

    latency_inference = latency_train = None
    if repeats > 0:
        latency_inference = median_latency_ms(
            lambda: inference_step(model, batch), torch_device, repeats)
        if not closed_form:
            optimizer = make_optimizer(model)
            latency_train = median_latency_ms(
                lambda: train_step(model, batch, optimizer), torch_device, repeats)

    return ProfileResult(
        model=label or model_name,
        device=str(torch_device),
        batch_size=shape.batch_size,
        params_total=counts["total"],
        params_trainable=counts["trainable"],
        params_language_model=language_model_params,
        flops_inference_per_sample=flops_inference,
        flops_train_per_sample=flops_train,
        latency_inference_ms=latency_inference,
        latency_train_ms=latency_train,
        memory_inference_peak_mib=memory_figures[0],
        memory_inference_extra_mib=memory_figures[1],
        memory_train_peak_mib=memory_figures[2],
        memory_train_extra_mib=memory_figures[3],
        memory_method=method,
    )


def write_csv(results: list[ProfileResult], path: Path) -> None:
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r.as_dict() for r in results]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
