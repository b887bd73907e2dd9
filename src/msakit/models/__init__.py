"""Model registry (in the style of timm): one file per model, registered by name.

Every module in this package is imported on first use, so a new model needs only its file and
the ``@register_model`` decorator on its class.
"""

from __future__ import annotations

import importlib
import pkgutil

from msakit.models.base import FeatureDims, ModelOutput, MSAModel
from msakit.modules.linear import use_cpu_linear

_REGISTRY: dict[str, type[MSAModel]] = {}
_DISCOVERED = False
_NOT_MODEL_MODULES = {"base"}


def register_model(cls: type[MSAModel]) -> type[MSAModel]:
    """Class decorator: make ``cls`` available as ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} must set a class attribute 'name'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"model name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_MODEL_MODULES and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _DISCOVERED = True


def list_models() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[MSAModel]:
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(config, dims: FeatureDims) -> MSAModel:
    """Build the model named by ``config.name`` (a :class:`~msakit.config.ModelConfig`), its
    ``nn.Linear`` layers computed through :mod:`msakit.modules.linear` (oneDNN on x86 CPUs)."""
    return use_cpu_linear(get_model_class(config.name)(config, dims))


__all__ = [
    "FeatureDims", "ModelOutput", "MSAModel", "register_model", "list_models",
    "get_model_class", "create_model",
]
