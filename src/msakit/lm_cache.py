"""An on-disk cache of a frozen language model's hidden states, reused across epochs, seeds,
folds and later runs.

When a model's language model is frozen (``model.freeze_language_model=true``; not LoRA, not
fine-tuning) its hidden states depend on the tokens alone, so they are computed once per clip
and stored. A training or evaluation batch then carries them as ``text_hidden`` and the model's
:class:`~msakit.modules.text.PretrainedTextEncoder` skips the LM.

Layout (safe to delete at any time; it is rebuilt on demand)::

    <root>/<store>/info.json                  the LM, tokenizer and token budget of this store
    <root>/<store>/shard-<digest>.safetensors hidden (N, L_max, H) float32, keys (N, 32) uint8

``<root>`` is ``train.lm_cache_dir``, else ``$MSAKIT_CACHE/lm``, else
``$XDG_CACHE_HOME/msakit/lm`` (``~/.cache/msakit/lm``). ``<store>`` is a digest of the LM's
weights (a checksum of every tensor), the tokenizer's class and name and the token budget
``L_max``, so any change to them starts a new store. Within a store an entry is keyed by a
digest of the clip's token ids (which follow from its text, the tokenizer and the budget). Each
clip's states are kept at every position up to ``L_max``, padding positions included, exactly as
the LM computes them in a padded batch, so cached and uncached runs see the same numbers.
Shards are written to a temporary file and renamed (atomic); concurrent writers (``--jobs``)
at worst write the same entries twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msakit.data.collate import SplitDataset, TextStates
from msakit.data.context import TextContext
from msakit.data.dataset import Split
from msakit.modules.text import PretrainedTextEncoder

log = logging.getLogger(__name__)

CACHE_ENV = "MSAKIT_CACHE"
KEY_BYTES = 32


def default_cache_root() -> Path:
    """``$MSAKIT_CACHE/lm``, else ``$XDG_CACHE_HOME/msakit/lm`` (default ``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "lm"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "msakit" / "lm"


def frozen_text_encoder(model: nn.Module) -> PretrainedTextEncoder | None:
    """The model's text encoder if its LM is entirely frozen (no LoRA, no fine-tuning), else None.

    A model with several LM encoders is not cached (no registered model has one).
    """
    encoders = [m for m in model.modules() if isinstance(m, PretrainedTextEncoder)]
    if len(encoders) != 1 or not encoders[0].is_frozen:
        return None
    return encoders[0]


def weights_checksum(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module.state_dict()`` (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def token_key(input_ids: np.ndarray, token_type_ids: np.ndarray) -> bytes:
    """A clip's entry key: SHA-256 of its token ids and segment ids (int64)."""
    digest = hashlib.sha256(np.asarray(input_ids, dtype=np.int64).tobytes())
    digest.update(b"|")
    digest.update(np.asarray(token_type_ids, dtype=np.int64).tobytes())
    return digest.digest()


@dataclass
class CacheStatistics:
    """Clips whose states were found (on disk or in memory) and clips computed."""

    hits: int = 0
    computed: int = 0


class LanguageModelCache:
    """Hidden states of one frozen LM for one tokenizer and token budget, on disk.

    Args:
        encoder: the model's frozen text encoder.
        tokenizer: the tokenizer its batches come from.
        max_text_tokens: token budget ``L_max`` (states are kept at every position up to it).
        root: cache folder (default :func:`default_cache_root`).
        batch_size: clips per LM pass when computing missing entries.
    """

    def __init__(self, encoder: PretrainedTextEncoder, tokenizer, max_text_tokens: int,
                 root: str | Path | None = None, batch_size: int = 64):
        if not encoder.is_frozen:
            raise ValueError("the language-model cache needs a frozen language model")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_text_tokens = int(max_text_tokens)
        self.batch_size = batch_size
        self.pad_token_id = int(tokenizer.pad_token_id or 0)
        identity = {
            "weights_sha256": weights_checksum(encoder.model),
            "tokenizer": f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}",
            "max_text_tokens": self.max_text_tokens,
            "hidden_size": encoder.hidden_size,
        }
        store = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
        self.directory = Path(root) if root is not None else default_cache_root()
        self.directory = self.directory / store
        self.identity = identity
        self._rows: dict[bytes, torch.Tensor] = {}
        self._loaded_shards: set[str] = set()

    # -- disk ------------------------------------------------------------------------------
    def _load_shards(self) -> None:
        from safetensors.torch import load_file

        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("shard-*.safetensors")):
            if path.name in self._loaded_shards:
                continue
            try:
                tensors = load_file(str(path))
                hidden, keys = tensors["hidden"], tensors["keys"]
            except Exception as err:  # noqa: BLE001 - a damaged shard is skipped and recomputed
                log.warning("language-model cache: ignoring unreadable %s (%s)", path, err)
                self._loaded_shards.add(path.name)
                continue
            if hidden.shape[1:] != (self.max_text_tokens, self.encoder.hidden_size):
                log.warning("language-model cache: ignoring %s of shape %s", path,
                            tuple(hidden.shape))
            else:
                for key, row in zip(keys.numpy(), hidden):
                    self._rows.setdefault(key.tobytes(), row)
            self._loaded_shards.add(path.name)

    def _write_shard(self, keys: list[bytes], hidden: torch.Tensor) -> None:
        from safetensors.torch import save_file

        from msakit.runfolder import writing

        self.directory.mkdir(parents=True, exist_ok=True)
        info = self.directory / "info.json"
        if not info.exists():
            _atomic_write_text(info, json.dumps(
                {**self.identity, "language_model": getattr(self.encoder.model.config,
                                                            "_name_or_path", "")}, indent=2))
        name = f"shard-{hashlib.sha256(b''.join(keys)).hexdigest()[:24]}.safetensors"
        key_array = torch.from_numpy(np.frombuffer(b"".join(keys), dtype=np.uint8)
                                     .reshape(len(keys), KEY_BYTES).copy())
        tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        with writing(self.directory / name, tmp):  # a full disk names the cache file
            save_file({"hidden": hidden.contiguous(), "keys": key_array}, str(tmp))
        os.replace(tmp, self.directory / name)
        self._loaded_shards.add(name)

    # -- computing -------------------------------------------------------------------------
    @torch.inference_mode()
    def _compute(self, tokens: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
        """``(n, L_max, H)`` states of ``tokens`` (``(input_ids, token_type_ids)`` pairs)."""
        device = next(self.encoder.model.parameters()).device
        length = self.max_text_tokens
        was_training = self.encoder.training
        self.encoder.eval()
        outputs = []
        try:
            for start in range(0, len(tokens), self.batch_size):
                chunk = tokens[start:start + self.batch_size]
                input_ids = torch.full((len(chunk), length), self.pad_token_id, dtype=torch.long)
                token_type_ids = torch.zeros((len(chunk), length), dtype=torch.long)
                attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
                for i, (ids, types) in enumerate(chunk):
                    input_ids[i, :len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
                    token_type_ids[i, :len(ids)] = torch.from_numpy(
                        np.asarray(types, dtype=np.int64))
                    attention_mask[i, :len(ids)] = 1
                # the store is shared with models that read padding positions: no length groups
                states = self.encoder.padded_language_model_states(
                    input_ids.to(device), attention_mask.to(device), token_type_ids.to(device))
                outputs.append(states.float().cpu())
        finally:
            self.encoder.train(was_training)
        return torch.cat(outputs)

    def states(self, tokens: list[tuple[np.ndarray, np.ndarray]]
               ) -> tuple[torch.Tensor, CacheStatistics]:
        """``(N, L_max, H)`` states of ``tokens``, from disk or computed (and then stored)."""
        keys = [token_key(ids, types) for ids, types in tokens]
        for ids, _ in tokens:
            if len(ids) > self.max_text_tokens:
                raise ValueError(f"a clip has {len(ids)} tokens, over the cache's budget "
                                 f"{self.max_text_tokens}")
        self._load_shards()
        missing: dict[bytes, int] = {}
        for position, key in enumerate(keys):
            if key not in self._rows and key not in missing:
                missing[key] = position
        statistics = CacheStatistics(hits=len(keys) - len(missing), computed=len(missing))
        if missing:
            computed = self._compute([tokens[p] for p in missing.values()])
            self._write_shard(list(missing), computed)
            for key, row in zip(missing, computed):
                self._rows[key] = row
        return torch.stack([self._rows[key] for key in keys]), statistics


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class SplitTextStates:
    """Cached LM states per split for one model, or ``None`` from :meth:`for_model`.

    States are memoised on the split (``split.token_cache``) so seeds and folds that share a
    split assemble them once per process.
    """

    def __init__(self, cache: LanguageModelCache, modalities, word_aligned: bool,
                 text_context=None):
        self.cache = cache
        self.modalities = tuple(modalities)
        self.word_aligned = word_aligned
        self.text_context = TextContext.parse(text_context)
        self.statistics = CacheStatistics()

    @classmethod
    def for_model(cls, model: nn.Module, config, word_aligned: bool) -> SplitTextStates | None:
        """States for ``model`` under ``config`` when ``train.lm_cache`` allows and its LM is
        frozen; ``None`` otherwise (the LM then runs on every batch)."""
        if config.train.lm_cache == "off":
            return None
        encoder = frozen_text_encoder(model)
        if encoder is None:
            return None
        from msakit.lm import load_tokenizer

        cache = LanguageModelCache(
            encoder, load_tokenizer(config.model.language_model), config.data.max_text_tokens,
            root=config.train.lm_cache_dir, batch_size=config.train.eval_batch_size,
        )
        return cls(cache, config.data.modalities, word_aligned, config.model.text_context)

    def __call__(self, split: Split) -> TextStates:
        memo_key = ("lm_states", str(self.cache.directory), self.modalities, self.word_aligned,
                    self.text_context.key())
        if memo_key in split.token_cache:
            self.statistics.hits += len(split)
            return split.token_cache[memo_key]
        dataset = SplitDataset(split, self.cache.tokenizer, self.cache.max_text_tokens,
                               self.modalities, self.word_aligned,
                               text_context=self.text_context)
        items: list[dict[str, Any]] = [dataset[i] for i in range(len(dataset))]
        tokens = [(item["input_ids"], item["token_type_ids"]) for item in items]
        hidden, statistics = self.cache.states(tokens)
        self.statistics.hits += statistics.hits
        self.statistics.computed += statistics.computed
        input_ids = torch.full((len(items), self.cache.max_text_tokens),
                               self.cache.pad_token_id, dtype=torch.long)
        for i, (ids, _) in enumerate(tokens):
            input_ids[i, :len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        states = TextStates(hidden=hidden, input_ids=input_ids)
        split.token_cache[memo_key] = states
        return states
