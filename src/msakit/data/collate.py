"""From a :class:`Split` to model batches (the dict documented in :mod:`msakit.models.base`).

Batch produced by :func:`collate` (``B`` clips; ``L_t`` longest token sequence, ``L_a``/``L_v``
longest audio/vision sequence in the batch):

=====================  =================  ==================================================
key                    shape / type       meaning
=====================  =================  ==================================================
``index``              ``(B,)`` long      row of the clip in its split
``input_ids``          ``(B, L_t)`` long  token ids, padded with the tokenizer's pad id
``attention_mask``     ``(B, L_t)`` long  1 for real tokens (with text context: the clip's
                                          own tokens only, what models pool and attend over)
``lm_attention_mask``  ``(B, L_t)`` long  text context only: 1 for every real token, the
                                          neighbours' too (what the language model attends to)
``token_type_ids``     ``(B, L_t)`` long  segment ids (zeros)
``audio``              ``(B, L_a, D_a)``  float32, zero-padded after each clip's true length
``audio_lengths``      ``(B,)`` long      true lengths, at least 1 (see below)
``audio_mask``         ``(B, L_a)`` bool  True for the first ``audio_lengths[i]`` steps
``vision``             ``(B, L_v, D_v)``  same for vision
``vision_lengths``     ``(B,)`` long
``vision_mask``        ``(B, L_v)`` bool
``word_audio``         ``(B, L_w, D_a)``  word-aligned data only: one step per word (not
                                          expanded), zero-padded; for recurrent encoders
``word_vision``        ``(B, L_w, D_v)``  same for vision
``word_lengths``       ``(B,)`` long      number of words of each clip
``word_mask``          ``(B, L_w)`` bool  True for real words
``host_lengths``       dict of ``(B,)``   ``text`` (the clip's own tokens, ``attention_mask``),
                                          ``audio``/``vision`` (and ``word``) lengths as CPU
                                          tensors: a dict, so moving the batch to a device
                                          leaves them on the host for ``pack_padded_sequence``
``labels``             ``(B,)`` float32   human sentiment label
``labels_T`` etc.      ``(B,)`` float32   unimodal labels, when the split has them (SIMS)
``ids``                list of str        clip ids
``text_hidden``        ``(B, L_t, H)``    a frozen LM's cached hidden states (only when the
                                          loader was given ``text_states``)
=====================  =================  ==================================================

Edge cases, chosen so models never see a zero length:

* **Absent modality** (the dataset has none, or ``modalities`` excludes it): ``audio`` is
  ``(B, 1, 0)`` (no features), ``audio_lengths`` all 1, ``audio_mask`` ``(B, 1)`` all True. A
  model built with ``FeatureDims(audio=0)`` ignores it.
* **Clip with zero steps** (possible in unaligned MMSA files): one zero row, length 1.
* **Text excluded** by ``modalities``: the tokens of an empty transcript (special tokens only).
* **Word-aligned data**: audio/vision are expanded to the tokens (see :mod:`msakit.data.text`),
  so ``L_a == L_v == L_t``, ``audio_lengths == attention_mask.sum(1)``, and special tokens and
  padding have zero rows; models that need token alignment (MulT, DMD) read these. The same
  features at one step per word (all of the clip's words, as the official MISA/Self-MM code
  reads them) are ``word_audio``/``word_vision`` with ``word_lengths``, for recurrent encoders
  (:func:`msakit.modules.encoders.recurrent_input`). With text excluded there is nothing to
  align to: audio/vision keep one step per word and equal ``word_audio``/``word_vision``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from msakit.data.context import TextContext, context_texts
from msakit.data.dataset import DataError, Split
from msakit.data.text import (
    PairTemplate,
    TokenizedText,
    add_context,
    expand_to_tokens,
    tokenize_text,
    tokenize_words,
)

#: ``transform(item, rng) -> item`` with item keys ``text`` (str), ``audio``/``vision``
#: (``(L, D)`` float32 arrays or None) and ``words`` (list of str or None; for word-aligned data
#: ``len(words) == L``). Applied to training clips before tokenisation.
Transform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]

ALL_MODALITIES = ("text", "audio", "vision")


class SplitDataset(Dataset):
    """A torch ``Dataset`` over one :class:`Split`, yielding tokenised clips.

    Tokenisation happens once per clip and is cached on the split (``split.token_cache``), so
    loaders rebuilt every epoch reuse it; with a ``transform`` each access transforms and
    tokenises afresh (the transform is random).

    Args:
        split: the clips.
        tokenizer: a Hugging Face tokenizer, or a name/path for :func:`msakit.lm.load_tokenizer`.
        max_text_tokens: token budget including special tokens.
        modalities: which of text/audio/vision to feed; the others are given as absent.
        word_aligned: expand audio/vision to sub-word tokens (needs ``split.words``).
        transform: optional augmentation, see :data:`Transform`.
        seed: seeds the ``numpy.random.Generator`` handed to ``transform``.
        text_context: read each clip with its video's neighbouring utterances
            (:mod:`msakit.data.context`; ``none``, ``previous:K``, ``next:K``, ``both:K``); items
            then carry ``text_own_length``. The neighbours are never transformed.
    """

    def __init__(
        self,
        split: Split,
        tokenizer,
        max_text_tokens: int = 64,
        modalities: Sequence[str] = ALL_MODALITIES,
        word_aligned: bool = False,
        transform: Transform | None = None,
        seed: int = 0,
        text_context: TextContext | str | None = None,
    ):
        unknown = set(modalities) - set(ALL_MODALITIES)
        if unknown:
            raise DataError(f"unknown modalities {sorted(unknown)}; use text, audio, vision")
        if word_aligned and split.words is None:
            raise DataError("word_aligned=True needs a split with words (a word-aligned file)")
        if isinstance(tokenizer, str):
            from msakit.lm import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        self.split = split
        self.tokenizer = tokenizer
        self.max_text_tokens = int(max_text_tokens)
        self.modalities = tuple(modalities)
        self.word_aligned = word_aligned
        self.transform = transform
        self.rng = np.random.default_rng(seed)
        self.pad_token_id = int(tokenizer.pad_token_id or 0)
        self.text_context = TextContext.parse(text_context)
        self._context: list[tuple[list[str], list[str]]] | None = None
        self._template: PairTemplate | None = None
        if self.text_context.enabled and "text" in self.modalities:
            self._template = PairTemplate.of(tokenizer)
            self._context = context_texts(split, self.text_context)
        # shared by every SplitDataset over this split with the same settings
        self.cache_key = (type(tokenizer).__name__,
                          getattr(tokenizer, "name_or_path", id(tokenizer)),
                          self.max_text_tokens, self.modalities, word_aligned,
                          *(("context", *self.text_context.key()) if self._context is not None else ()))
        self._cache: dict[int, dict[str, Any]] = split.token_cache.setdefault(self.cache_key, {})

    def __len__(self) -> int:
        return len(self.split)

    def raw_item(self, index: int) -> dict[str, Any]:
        """The clip as ``transform`` sees it: text, audio, vision, words (absent ones None)."""
        split = self.split
        return {
            "text": split.texts[index],
            "audio": None if split.audio is None or "audio" not in self.modalities
            else split.audio[index],
            "vision": None if split.vision is None or "vision" not in self.modalities
            else split.vision[index],
            "words": None if split.words is None else list(split.words[index]),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if self.transform is None and index in self._cache:
            return self._cache[index]
        raw = self.raw_item(index)
        if self.transform is not None:
            raw = self.transform(dict(raw), self.rng)
        item = self._encode(index, raw)
        if self.transform is None:
            self._cache[index] = item
        return item

    def _encode(self, index: int, raw: dict[str, Any]) -> dict[str, Any]:
        split = self.split
        use_text = "text" in self.modalities
        tokens: TokenizedText
        if self.word_aligned and use_text:
            tokens = tokenize_words(self.tokenizer, raw["words"], self.max_text_tokens)
        else:
            tokens = tokenize_text(self.tokenizer, raw["text"] if use_text else "",
                                   self.max_text_tokens)
        if self._context is not None:
            previous, following = self._context[index]
            tokens = add_context(tokens, self.tokenizer, self._template, previous, following,
                                 self.max_text_tokens)
        item: dict[str, Any] = {
            "index": index,
            "id": split.ids[index],
            "input_ids": tokens.input_ids,
            "token_type_ids": tokens.token_type_ids,
            "label": float(split.labels[index]),
            "extra_labels": {k: float(v[index]) for k, v in split.extra_labels.items()},
        }
        if tokens.own_length is not None:
            item["text_own_length"] = tokens.own_length
        for modality in ("audio", "vision"):
            features = raw[modality]
            if features is not None and self.word_aligned:
                if use_text and features.shape[0] != len(raw["words"]):
                    raise DataError(
                        f"clip {split.ids[index]!r}: {modality} has {features.shape[0]} rows "
                        f"but {len(raw['words'])} words (a transform broke the alignment?)"
                    )
                if use_text:
                    features = expand_to_tokens(features, tokens.word_index)
                # without text there are no tokens to align to: one step per word stays
            item[modality] = features
            if self.word_aligned and raw[modality] is not None:
                item[f"word_{modality}"] = raw[modality]
        return item


def _pad_features(
    arrays: list[np.ndarray | None], name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, L, D)`` zero-padded features, ``(B,)`` lengths >= 1 and ``(B, L)`` bool mask."""
    batch = len(arrays)
    present = [a is not None for a in arrays]
    if not any(present):
        return (torch.zeros(batch, 1, 0), torch.ones(batch, dtype=torch.long),
                torch.ones(batch, 1, dtype=torch.bool))
    if not all(present):
        raise DataError(f"batch mixes clips with and without {name}")
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise DataError(f"batch has {name} of different feature dims {sorted(dims)}")
    lengths = torch.tensor([max(a.shape[0], 1) for a in arrays], dtype=torch.long)
    padded = torch.zeros(batch, int(lengths.max()), dims.pop())
    for i, array in enumerate(arrays):
        if array.shape[0]:
            padded[i, : array.shape[0]] = torch.from_numpy(np.ascontiguousarray(array))
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return padded, lengths, mask


def _put_sequences(batch: dict[str, Any], host_lengths: dict[str, torch.Tensor], key: str,
                   padded: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """Put padded ``(features (B, L, D), lengths (B,), mask (B, L))`` into ``batch`` under
    ``key`` (``audio``/``vision``: ``<key>``, ``<key>_lengths``, ``<key>_mask``; the word-level
    ``word_<m>``: ``word_<m>``, ``word_lengths``, ``word_mask``) and a copy of the lengths into
    ``host_lengths``."""
    features, lengths, mask = padded
    name = "word" if key.startswith("word_") else key
    batch[key] = features
    batch[f"{name}_lengths"], batch[f"{name}_mask"] = lengths, mask
    host_lengths[name] = lengths.clone()


def _put_own_mask(batch: dict[str, Any], own_lengths: torch.Tensor) -> None:
    """Text context: the LM reads every token (``lm_attention_mask``), models the clip's own
    tokens, a prefix of ``own_lengths[i]`` tokens (``attention_mask``)."""
    batch["lm_attention_mask"] = batch["attention_mask"]
    positions = torch.arange(batch["input_ids"].shape[1])
    batch["attention_mask"] = (positions[None, :] < own_lengths[:, None]).long()


def collate(items: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Any]:
    """Stack :class:`SplitDataset` items into the batch dict of the module docstring."""
    if not items:
        raise DataError("cannot collate an empty batch")
    batch_size = len(items)
    text_length = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((batch_size, text_length), pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((batch_size, text_length), dtype=torch.long)
    attention_mask = torch.zeros((batch_size, text_length), dtype=torch.long)
    for i, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[i, :n] = torch.from_numpy(item["input_ids"])
        token_type_ids[i, :n] = torch.from_numpy(item["token_type_ids"])
        attention_mask[i, :n] = 1
    batch: dict[str, Any] = {
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }
    with_context = ["text_own_length" in item for item in items]
    if any(with_context):
        if not all(with_context):
            raise DataError("batch mixes clips with and without text context")
        own = torch.tensor([item["text_own_length"] for item in items], dtype=torch.long)
        _put_own_mask(batch, own)
    host_lengths: dict[str, torch.Tensor] = {"text": batch["attention_mask"].sum(1)}
    for modality in ("audio", "vision"):
        _put_sequences(batch, host_lengths, modality,
                       _pad_features([item[modality] for item in items], modality))
    for modality in ("audio", "vision"):
        key = f"word_{modality}"
        if any(key in item for item in items):
            if not all(key in item for item in items):
                raise DataError(f"batch mixes clips with and without {key}")
            _put_sequences(batch, host_lengths, key,
                           _pad_features([item[key] for item in items], key))
    batch["host_lengths"] = host_lengths
    batch["labels"] = torch.tensor([item["label"] for item in items], dtype=torch.float32)
    for key in items[0]["extra_labels"]:
        batch[f"labels_{key}"] = torch.tensor(
            [item["extra_labels"][key] for item in items], dtype=torch.float32
        )
    batch["ids"] = [item["id"] for item in items]
    return batch


def _pack_rows(arrays: list[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Concatenate per-clip arrays ``(L_i, ...)`` into ``(sum L_i, ...)`` with offsets and lengths.

    A clip with no rows gets one zero row (length 1), as :func:`_pad_features` gives it.
    """
    rows = [a if a.shape[0] else np.zeros((1, *a.shape[1:]), dtype=a.dtype) for a in arrays]
    lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
    offsets = torch.cumsum(lengths, 0) - lengths
    flat = torch.from_numpy(np.concatenate(rows)).to(dtype) if rows else torch.zeros(0)
    return flat, offsets, lengths


def _gather_padded(flat: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor,
                   indices: torch.Tensor, pad_value: float = 0):
    """Rows of the clips ``indices`` from packed storage, padded to the longest of them.

    Returns:
        ``(B, L, ...)`` rows (``pad_value`` after each clip's length), ``(B,)`` lengths and
        ``(B, L)`` bool mask, with ``L = max(lengths[indices])``.
    """
    batch_lengths = lengths[indices]
    positions = torch.arange(int(batch_lengths.max()))
    mask = positions[None, :] < batch_lengths[:, None]
    rows = torch.where(mask, offsets[indices][:, None] + positions[None, :], 0)
    padded = flat[rows]
    fill = mask if padded.dim() == 2 else mask[..., None]
    return padded.masked_fill(~fill, pad_value), batch_lengths, mask


@dataclass
class PackedSplit:
    """Every clip of a :class:`SplitDataset` encoded once and stored back to back.

    Token ids and (word-aligned expanded) features of all ``N`` clips live in flat tensors
    ``(sum L_i, ...)`` with per-clip offsets and lengths, so a batch is a few vectorised gathers
    (:meth:`batch`), with no per-clip Python work, and memory is the clips' true size.
    """

    ids: list[str]
    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    text_offsets: torch.Tensor
    text_lengths: torch.Tensor
    features: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]
    labels: torch.Tensor
    extra_labels: dict[str, torch.Tensor]
    pad_token_id: int
    own_lengths: torch.Tensor | None = None  # text context: (N,) the clips' own token counts

    @classmethod
    def from_dataset(cls, dataset: SplitDataset) -> PackedSplit:
        if dataset.transform is not None:
            raise DataError("a dataset with a transform changes every access; it cannot be packed")
        items = [dataset[i] for i in range(len(dataset))]
        if not items:
            raise DataError("cannot pack an empty split")
        input_ids, text_offsets, text_lengths = _pack_rows(
            [item["input_ids"] for item in items], torch.long)
        token_type_ids = _pack_rows([item["token_type_ids"] for item in items], torch.long)[0]
        features = {}
        for modality in ("audio", "vision"):
            arrays = [item[modality] for item in items]
            present = [a is not None for a in arrays]
            if any(present) and not all(present):
                raise DataError(f"split mixes clips with and without {modality}")
            features[modality] = _pack_rows(arrays, torch.float32) if all(present) else None
            words = [item.get(f"word_{modality}") for item in items]
            if any(w is not None for w in words):
                if not all(w is not None for w in words):
                    raise DataError(f"split mixes clips with and without word_{modality}")
                features[f"word_{modality}"] = _pack_rows(words, torch.float32)
        split = dataset.split
        return cls(
            ids=list(split.ids),
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            text_offsets=text_offsets,
            text_lengths=text_lengths,
            features=features,
            labels=torch.as_tensor(np.asarray(split.labels), dtype=torch.float32),
            extra_labels={k: torch.as_tensor(np.asarray(v), dtype=torch.float32)
                          for k, v in split.extra_labels.items()},
            pad_token_id=dataset.pad_token_id,
            own_lengths=torch.tensor([item["text_own_length"] for item in items],
                                     dtype=torch.long)
            if "text_own_length" in items[0] else None,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int] | torch.Tensor) -> dict[str, Any]:
        """The batch dict of the module docstring for the clips at ``indices`` (in order)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if index.numel() == 0:
            raise DataError("cannot collate an empty batch")
        input_ids, _, text_mask = _gather_padded(
            self.input_ids, self.text_offsets, self.text_lengths, index, self.pad_token_id)
        token_type_ids = _gather_padded(
            self.token_type_ids, self.text_offsets, self.text_lengths, index)[0]
        batch: dict[str, Any] = {
            "index": index,
            "input_ids": input_ids,
            "attention_mask": text_mask.long(),
            "token_type_ids": token_type_ids,
        }
        if self.own_lengths is not None:
            _put_own_mask(batch, self.own_lengths[index])
        size = index.shape[0]
        host_lengths: dict[str, torch.Tensor] = {"text": batch["attention_mask"].sum(1)}
        for modality in ("audio", "vision"):
            packed = self.features[modality]
            if packed is None:
                padded = (torch.zeros(size, 1, 0), torch.ones(size, dtype=torch.long),
                          torch.ones(size, 1, dtype=torch.bool))
            else:
                padded = _gather_padded(*packed, index)
            _put_sequences(batch, host_lengths, modality, padded)
        for modality in ("audio", "vision"):
            packed = self.features.get(f"word_{modality}")
            if packed is not None:
                _put_sequences(batch, host_lengths, f"word_{modality}",
                               _gather_padded(*packed, index))
        batch["host_lengths"] = host_lengths
        batch["labels"] = self.labels[index]
        for key, values in self.extra_labels.items():
            batch[f"labels_{key}"] = values[index]
        batch["ids"] = [self.ids[i] for i in index.tolist()]
        return batch


@dataclass(frozen=True)
class TextStates:
    """A frozen language model's hidden states for every clip of a split (:mod:`msakit.lm_cache`).

    Attributes:
        hidden: ``(N, L_max, H)`` float32, each clip's states at every position up to the token
            budget ``L_max`` (padding positions included, as the LM computes them).
        input_ids: ``(N, L_max)`` long, the tokens they were computed from, padded.
    """

    hidden: torch.Tensor
    input_ids: torch.Tensor


def add_text_states(batch: dict[str, Any], text_states: TextStates) -> dict[str, Any]:
    """Add ``text_hidden`` ``(B, L_t, H)``, gathered for the batch's clips, to ``batch``.

    The batch's tokens must be those the states were computed from (a transform that changes
    the text cannot use cached states): a mismatch is an error, never a silent reuse.
    """
    index, text_length = batch["index"], batch["input_ids"].shape[1]
    if not torch.equal(text_states.input_ids[index, :text_length], batch["input_ids"]):
        raise DataError("the batch's tokens differ from those the cached language-model states "
                        "were computed from (does a transform change the text?); set "
                        "train.lm_cache=off")
    batch["text_hidden"] = text_states.hidden[index, :text_length]
    return batch


def collate_with_text_states(items: list[dict[str, Any]], pad_token_id: int,
                             text_states: TextStates) -> dict[str, Any]:
    """:func:`collate` plus :func:`add_text_states`."""
    return add_text_states(collate(items, pad_token_id), text_states)


class PackedBatches(Dataset):
    """``dataset[list_of_indices]`` -> one batch; used with a ``BatchSampler`` as sampler.

    With ``text_states`` each batch also carries the frozen LM's cached ``text_hidden``.
    """

    def __init__(self, packed: PackedSplit, text_states: TextStates | None = None):
        self.packed = packed
        self.text_states = text_states

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        batch = self.packed.batch(indices)
        return batch if self.text_states is None else add_text_states(batch, self.text_states)


def packed_split(dataset: SplitDataset) -> PackedSplit:
    """The dataset's :class:`PackedSplit`, built once and kept with the split's token cache."""
    key = ("packed", *dataset.cache_key)
    cache = dataset.split.token_cache
    if key not in cache:
        cache[key] = PackedSplit.from_dataset(dataset)
    return cache[key]


def make_loader(
    data: Split | SplitDataset,
    tokenizer=None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    *,
    max_text_tokens: int = 64,
    modalities: Sequence[str] = ALL_MODALITIES,
    word_aligned: bool = False,
    transform: Transform | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    sampler: Sampler[int] | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    text_states: TextStates | None = None,
    text_context: TextContext | str | None = None,
) -> DataLoader:
    """A ``DataLoader`` of batches (see :func:`collate`), deterministic for a given ``seed``.

    Without a ``transform`` the split is tokenised and packed once (:class:`PackedSplit`) and
    each batch is gathered from it; with one, every access transforms and tokenises afresh.

    Args:
        data: a :class:`Split` (wrapped in a new :class:`SplitDataset`), or a
            :class:`SplitDataset` to reuse its token cache across loaders.
        tokenizer: tokenizer or name (required when ``data`` is a Split).
        shuffle: reshuffle each epoch with a ``torch.Generator`` seeded by ``seed``, so the
            sequence of batches over epochs is the same for the same seed.
        transform: augmentation applied to raw training clips (pass it for training only);
            its ``numpy.random.Generator`` is seeded by ``seed`` too (deterministic with
            ``num_workers=0``).
        sampler: the clip order instead of ``shuffle`` (e.g. a ``DistributedSampler``).
        pin_memory, persistent_workers, num_workers: passed to ``DataLoader``.
        text_states: a frozen LM's cached states for the split's clips; each batch then
            carries ``text_hidden`` and models skip the LM.
        text_context: neighbouring utterances read with each clip (see :class:`SplitDataset`).
        Other args: see :class:`SplitDataset`.
    """
    if isinstance(data, SplitDataset):
        dataset = data
        if transform is not None:
            raise DataError("pass transform to the SplitDataset, not to make_loader, when "
                            "reusing one")
    else:
        if tokenizer is None:
            raise DataError("make_loader needs a tokenizer to tokenise a Split")
        dataset = SplitDataset(data, tokenizer, max_text_tokens, modalities, word_aligned,
                               transform, seed, text_context)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if sampler is None:
        sampler = (RandomSampler(dataset, generator=generator) if shuffle
                   else SequentialSampler(dataset))
    workers = {"num_workers": num_workers, "pin_memory": pin_memory,
               "persistent_workers": persistent_workers and num_workers > 0}
    if dataset.transform is None:
        return DataLoader(PackedBatches(packed_split(dataset), text_states), batch_size=None,
                          sampler=BatchSampler(sampler, batch_size, drop_last),
                          generator=generator, **workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=generator,
        collate_fn=partial(collate, pad_token_id=dataset.pad_token_id) if text_states is None
        else partial(collate_with_text_states, pad_token_id=dataset.pad_token_id,
                     text_states=text_states),
        drop_last=drop_last,
        **workers,
    )
