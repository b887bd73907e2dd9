"""Errors shared across msakit's layers (kept in a module that imports nothing of msakit)."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration; the message names the key and what is allowed."""


class MissingExtraError(RuntimeError):
    """An optional capability whose packages are not installed; the message names the extra."""


def require_extra(module: str, extra: str, feature: str):
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError` naming the pip
    extra that installs it (``pip install 'msakit[extra]'``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{feature} needs the package {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'msakit[{extra}]'") from err
