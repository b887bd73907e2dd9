"""Hand-built batches (the documented batch dict) for model tests: real tokenizer, given lengths."""

from __future__ import annotations

import torch

from msakit.config import DEFAULT_LANGUAGE_MODEL
from msakit.lm import load_tokenizer


def make_batch(texts, audio_lengths, vision_lengths, audio_dim=5, vision_dim=7, labels=None,
               seed=0, aligned=False):
    """A batch for ``texts``; with ``aligned`` audio/vision have one row per token."""
    generator = torch.Generator().manual_seed(seed)
    encoded = load_tokenizer(DEFAULT_LANGUAGE_MODEL)(list(texts), padding=True,
                                                      return_tensors="pt")
    batch = {k: v for k, v in encoded.items()}
    if aligned:
        audio_lengths = vision_lengths = batch["attention_mask"].sum(1).tolist()
    for name, lengths, dim in (("audio", audio_lengths, audio_dim),
                               ("vision", vision_lengths, vision_dim)):
        lengths = torch.tensor(lengths)
        steps = int(lengths.max())
        mask = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
        values = torch.randn(len(texts), steps, dim, generator=generator) * mask.unsqueeze(-1)
        batch[name], batch[f"{name}_lengths"], batch[f"{name}_mask"] = values, lengths, mask
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.float32)
    batch["index"] = torch.arange(len(texts))
    batch["ids"] = [f"clip{i}" for i in range(len(texts))]
    return batch


def select(batch, rows):
    """Rows of a batch, with text/audio/vision trimmed to the rows' own longest lengths."""
    out = {}
    index = torch.as_tensor(rows)
    text_steps = int(batch["attention_mask"][index].sum(1).max())
    for key, value in batch.items():
        if key == "ids":
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value[index]
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key in out:
            out[key] = out[key][:, :text_steps]
    for name in ("audio", "vision"):
        steps = int(out[f"{name}_lengths"].max())
        out[name], out[f"{name}_mask"] = out[name][:, :steps], out[f"{name}_mask"][:, :steps]
    return out
