"""The ``msakit`` command line.

Each module in this package adds its commands through ``register(group)``, so a feature's
commands live beside nothing else's.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from msakit import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="msakit")
def main() -> None:
    """msakit: train, compare and apply multimodal sentiment analysis models."""


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(main)


_register_commands()
