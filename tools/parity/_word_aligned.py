"""Shared pieces of the parity fixture generators (``tools/parity/<model>.py``).

Nothing here comes from an official repository: it builds the real input batches, the small
randomly initialised BERT that stands in for ``bert-base-uncased``, and writes the fixture.

Batches: clips of the 229 real MOSI clips (``word_aligned_valid.pkl``) with unequal word counts,
each batch sorted by word count, longest first (the official MISA collate does the same, and
``pack_padded_sequence`` in its model needs it). Features are the first ``AUDIO_DIMS`` COVAREP and
``VISION_DIMS`` Facet columns (the official recurrent encoders have hidden size = input size,
so the full 74/47 columns would make a fixture of several MB). Text: one token per word, ids
from the clips' sorted vocabulary folded into ``VOCAB`` ids (``[PAD]=0``, ``[CLS]=1``,
``[SEP]=2``), so no tokenizer download is needed; the LM is a 2-layer BERT with hidden size 32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import official_commit, save_fixture  # noqa: F401  (save_fixture: for the generators)

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT.parent / "shared" / "data" / "mosi" / "word_aligned_valid.pkl"

#: rows of the 229 clips, one list per batch (unequal word counts in each)
BATCH_ROWS = ([0, 3, 7, 12], [40, 41, 100, 150], [20, 60, 90, 120])
AUDIO_DIMS = 6
VISION_DIMS = 5
VOCAB = 100
PAD, CLS, SEP = 0, 1, 2

BERT_CONFIG = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD,
)


def small_bert_config():
    from transformers import BertConfig

    return BertConfig(**BERT_CONFIG)


def real_batches(data_path: Path = DATA) -> list[dict[str, torch.Tensor]]:
    """The fixed batches, batch-first, float64 features, as plain tensors.

    Keys: ``input_ids``/``attention_mask``/``token_type_ids`` ``(B, W + 2)``, ``audio``
    ``(B, W, AUDIO_DIMS)``, ``vision`` ``(B, W, VISION_DIMS)`` zero-padded, ``lengths`` ``(B,)``
    word counts, ``labels`` ``(B,)``, ``ids`` (clip ids, a list).
    """
    import sys

    sys.path.insert(0, str(REPO_ROOT / "src"))
    from msakit.data import load_dataset

    split = load_dataset(data_path).split("all")
    vocabulary = sorted({w for rows in BATCH_ROWS for r in rows for w in split.words[r]})
    word_id = {w: 3 + i % (VOCAB - 3) for i, w in enumerate(vocabulary)}
    batches = []
    for rows in BATCH_ROWS:
        rows = sorted(rows, key=lambda r: -len(split.words[r]))
        words = [len(split.words[r]) for r in rows]
        if len(set(words)) < 2:
            raise SystemExit(f"batch {rows} needs unequal lengths, got {words}")
        width = max(words)
        size = len(rows)
        input_ids = torch.full((size, width + 2), PAD, dtype=torch.long)
        audio = torch.zeros(size, width, AUDIO_DIMS, dtype=torch.float64)
        vision = torch.zeros(size, width, VISION_DIMS, dtype=torch.float64)
        for b, r in enumerate(rows):
            n = words[b]
            input_ids[b, : n + 2] = torch.tensor(
                [CLS] + [word_id[w] for w in split.words[r]] + [SEP])
            audio[b, :n] = torch.from_numpy(split.audio[r][:, :AUDIO_DIMS]).double()
            vision[b, :n] = torch.from_numpy(split.vision[r][:, :VISION_DIMS]).double()
        batches.append({
            "input_ids": input_ids,
            "attention_mask": (input_ids != PAD).long(),
            "token_type_ids": torch.zeros_like(input_ids),
            "audio": audio,
            "vision": vision,
            "lengths": torch.tensor(words, dtype=torch.long),
            "labels": torch.tensor([float(split.labels[r]) for r in rows], dtype=torch.float64),
            "ids": [split.ids[r] for r in rows],
        })
    return batches


def round_to_float32(module: torch.nn.Module) -> None:
    """Make every weight exactly representable in float32 (the fixture stores float32) while
    the module computes in float64."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.float().double())


def as_float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in tensors.items()}


def zero_dropout(module: torch.nn.Module) -> None:
    """Set every dropout probability to 0: random masks cannot be matched between two codes."""
    for child in module.modules():
        if isinstance(child, torch.nn.Dropout):
            child.p = 0.0
        if isinstance(child, torch.nn.MultiheadAttention):
            child.dropout = 0.0


def fixture_header(model: str, official_repo: str, official: Path) -> dict:
    """The fields a fixture starts with: the model, the official repository and the checkout's
    commit, this generator (``tools/parity/<model>.py``) and the small BERT's config."""
    return {
        "model": model,
        "official_repo": official_repo,
        "official_commit": official_commit(official),
        "generator": f"tools/parity/{model}.py",
        "bert_config": BERT_CONFIG,
    }


def stored_batches(batches: list[dict]) -> list[dict]:
    """The batches as the fixture keeps them: floating-point tensors in float32."""
    return [{k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
             for k, v in b.items()} for b in batches]
