"""Click helpers shared by the command modules."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console


def make_console() -> Console:
    """Full-width tables also when the output is a file or a pipe (rich would use 80 columns)."""
    return Console(width=None if sys.stdout.isatty() else 200)


def shortcut_overrides(overrides: tuple[str, ...] | list[str],
                       shortcuts: dict[str, tuple[str, object]]) -> list[str]:
    """``overrides`` followed by the given shortcut options as ``key=value`` overrides.

    Args:
        overrides: the ``--set SECTION.KEY=VALUE`` strings.
        shortcuts: ``{config key: (option, value)}``, e.g. ``{"train.epochs": ("--epochs", 5)}``;
            a value of ``None`` means the option was not given.

    Raises:
        ConfigError: a key set both by its shortcut and by ``--set`` (neither silently wins).
    """
    from msakit.config import ConfigError

    given = {key: (option, value) for key, (option, value) in shortcuts.items()
             if value is not None}
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if key in given:
            option, value = given[key]
            raise ConfigError(f"{option} {value} and --set {override} both set {key}; give one")
    return list(overrides) + [f"{key}={value}" for key, (_, value) in given.items()]


class MultiValueCommand(click.Command):
    """A command whose named options take one or more values after one flag: ``--seeds 1 2 3``.

    Click options take a fixed number of values. Before click parses the arguments (through the
    public :meth:`click.Command.parse_args`), ``--seeds 1 2 3`` is rewritten to
    ``--seeds 1 --seeds 2 --seeds 3``, so each such option is declared with ``multiple=True``.
    The first value is always taken (as click does for any option), the following ones up to the
    next token that starts with ``-`` or ``--``.

    Args:
        multi_value_options: the flags that take several values, e.g. ``("--seeds",)``.
    """

    def __init__(self, *args, multi_value_options: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.multi_value_options = tuple(multi_value_options)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_value(args, self.multi_value_options))


def expand_multi_value(args: list[str], flags: tuple[str, ...]) -> list[str]:
    """``["--seeds", "1", "2", "-x"]`` -> ``["--seeds", "1", "--seeds", "2", "-x"]``."""
    out: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if token == "--":
            out += args[index - 1:]
            break
        out.append(token)
        if token not in flags or index >= len(args):
            continue
        out.append(args[index])  # the first value, whatever it looks like
        index += 1
        while index < len(args) and not args[index].startswith("-"):
            out += [token, args[index]]
            index += 1
    return out


class DataPathType(click.Path):
    """An existing data file/folder, or the name of a packaged dataset (``mosi-demo``)."""

    name = "data"

    def __init__(self):
        super().__init__(exists=True)

    def convert(self, value, param, ctx):
        from msakit.data.packaged import is_packaged

        if is_packaged(value) and not os.path.exists(value):
            return value
        return super().convert(value, param, ctx)


DATA_PATH = DataPathType()
