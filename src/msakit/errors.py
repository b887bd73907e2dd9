"""Errors shared across msakit's layers (kept in a module that imports nothing of msakit)."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration; the message names the key and what is allowed."""
