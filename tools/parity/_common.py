"""Shared pieces of the parity-fixture generators (run by hand, never in CI).

Each generator imports an official implementation from a checkout (``--official DIR``), patches it
at run time so that it runs on a CPU without downloads, runs it on a few real clips and saves what
it computed into ``tests/parity/<model>.pt``. Nothing of the official code is copied here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mosi" / "word_aligned_valid.pkl"

#: The small randomly initialised BERT that stands in for bert-base in every fixture: its config is
#: saved in the fixture and the test rebuilds the same encoder from it.
TINY_BERT = {
    "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
PAD_ID, CLS_ID, SEP_ID = 0, 1, 2


def official_commit(checkout: Path) -> str:
    """The commit of an official checkout (a git clone, or an archive with a ``COMMIT`` file);
    the generators refuse a checkout whose commit they cannot tell."""
    marker = Path(checkout) / "COMMIT"
    if marker.exists():
        return marker.read_text().strip()
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(
            f"{checkout}: cannot tell the official commit (not a git checkout and no COMMIT "
            f"file): {err}"
        ) from None


def tiny_bert():
    """A fresh randomly initialised tiny ``BertModel`` (seed the RNG before calling)."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**TINY_BERT))


def patch_bert_downloads() -> None:
    """``BertModel.from_pretrained`` -> the tiny random BERT; ``BertTokenizer.from_pretrained`` ->
    ``None`` (the official models only tokenise in helpers the generators do not call)."""
    import transformers

    transformers.BertModel.from_pretrained = classmethod(lambda cls, *a, **k: tiny_bert())
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: None)


def add_to_path(directory: Path) -> None:
    sys.path.insert(0, str(Path(directory).resolve()))


def fold_token_ids(ids: list[int], special: dict[int, int]) -> list[int]:
    """Map real token ids into the tiny vocabulary: specials to 0/1/2, the rest to 3..127."""
    span = TINY_BERT["vocab_size"] - 3
    return [special[i] if i in special else 3 + i % span for i in ids]


def real_clips(data: Path, rows: list[int]) -> dict:
    """Transcripts tokenised by msakit's default tokenizer (ids folded into the tiny vocabulary)
    and the word-level COVAREP/Facet sequences of the chosen clips of the 229-clip pickle.

    Returns ``input_ids``/``attention_mask``/``token_type_ids`` ``(B, L_t)`` long, ``audio``
    ``(B, L, 74)``, ``vision`` ``(B, L, 47)`` float64 zero-padded, ``lengths`` ``(B,)`` long,
    ``labels`` ``(B,)`` float64 and ``ids``.
    """
    from msakit.data import load_dataset
    from msakit.lm import load_tokenizer

    split = load_dataset(data).split("all").subset(rows)
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    special = {tokenizer.pad_token_id: PAD_ID, tokenizer.cls_token_id: CLS_ID,
               tokenizer.sep_token_id: SEP_ID}
    encoded = [fold_token_ids(tokenizer(text)["input_ids"], special) for text in split.texts]
    text_len = max(len(e) for e in encoded)
    input_ids = torch.zeros(len(rows), text_len, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), text_len, dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
    lengths = torch.tensor([a.shape[0] for a in split.audio])
    steps = int(lengths.max())

    def pad(arrays):
        out = torch.zeros(len(arrays), steps, arrays[0].shape[1], dtype=torch.float64)
        for i, a in enumerate(arrays):
            out[i, :a.shape[0]] = torch.from_numpy(np.nan_to_num(a.astype(np.float64),
                                                                 posinf=0.0, neginf=0.0))
        return out

    return {
        "input_ids": input_ids, "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "audio": pad(split.audio), "vision": pad(split.vision), "lengths": lengths,
        "labels": torch.from_numpy(split.labels.astype(np.float64)), "ids": list(split.ids),
    }


def compact(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors stored as float32 (initial weights were float32 already: exact)."""
    return {k: v.detach().to(torch.float32).clone() if v.is_floating_point() else v.clone()
            for k, v in tensors.items()}


def packed(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`compact`, every tensor a view of one shared float32 storage: ``torch.save`` writes
    one storage instead of one per tensor (a fixture of hundreds of small tensors is mostly
    per-storage overhead otherwise). Loaded, each is an ordinary contiguous tensor."""
    tensors = compact(tensors)
    if not all(v.dtype == torch.float32 for v in tensors.values()):
        raise ValueError("packed() stores floating-point tensors only")
    flat = torch.cat([v.reshape(-1) for v in tensors.values()])
    out, offset = {}, 0
    for name, value in tensors.items():
        out[name] = flat[offset:offset + value.numel()].view(value.shape)
        offset += value.numel()
    return out


def scripted_validation(losses: list[float], epochs_seen: list[int]):
    """A stand-in for the official trainer's ``do_test``: each call appends its epoch number to
    ``epochs_seen`` and returns the next scripted validation loss as ``{"Loss": value}``."""
    scripted = iter(losses)

    def scripted_test(model, dataloader, *args, **kwargs):
        epochs_seen.append(len(epochs_seen) + 1)
        return {"Loss": next(scripted)}

    return scripted_test


def recording_adam(model: torch.nn.Module, on_step) -> type[torch.optim.Adam]:
    """``torch.optim.Adam`` whose ``step`` collects the gradient of every parameter of ``model``
    (zeros where none), steps, then calls ``on_step(gradients)``: set it as the official
    trainer module's ``optim.Adam`` to record the official optimiser steps."""

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            gradients = {k: (p.grad.detach().clone() if p.grad is not None
                             else torch.zeros_like(p)) for k, p in model.named_parameters()}
            result = super().step(closure)
            on_step(gradients)
            return result

    return RecordingAdam


def save_fixture(fixture: dict, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


def record_rated(model: torch.nn.Module, inputs: list, run, seed: int = 2) -> tuple[dict, list]:
    """The dropout map and the eval-mode outputs of ``model`` (built at the official default
    dropout rates, with the fixture's initial weights): ``run(model, inputs[i]) -> {name:
    tensor}`` is one forward pass. Returns ``({"calls": [(p, input shape), ...], "modules":
    [name of the ``nn.Dropout`` of each call, or None for a direct ``F.dropout``], "lstm": [(name,
    dropout, num_layers), ...], "attention": [(name, dropout), ...], "batch": 0}, [eval outputs
    of each input])``: the calls of one train-mode pass over ``inputs[0]`` in call order
    (``nn.Dropout`` calls ``F.dropout``; an LSTM's inter-layer dropout runs in its kernel and
    ``nn.MultiheadAttention``'s attention dropout in ``scaled_dot_product_attention``, so their
    rates come from the modules), then the outputs of every input in eval mode."""
    from _mmsa import lstm_dropouts, recorded_dropout

    calls: list = []
    modules: dict[int, str] = {}  # call index -> the nn.Dropout that made it

    def note(name):
        return lambda module, args: modules.__setitem__(len(calls), name)

    hooks = [m.register_forward_pre_hook(note(n)) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Dropout)]
    model.train()
    torch.manual_seed(seed)
    try:
        with recorded_dropout(calls):
            run(model, inputs[0])
    finally:
        for hook in hooks:
            hook.remove()
    model.eval()
    with torch.no_grad():
        outputs = [compact({k: v.detach() for k, v in run(model, x).items()}) for x in inputs]
    print(f"dropout map: {calls}")
    attention = [(n, float(m.dropout)) for n, m in model.named_modules()
                 if isinstance(m, torch.nn.MultiheadAttention)]
    return {"calls": calls, "modules": [modules.get(i) for i in range(len(calls))],
            "lstm": lstm_dropouts(model), "attention": attention, "batch": 0}, outputs
