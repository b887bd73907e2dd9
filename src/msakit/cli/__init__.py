"""The ``msakit`` command line.

Each module in this package adds its commands through ``register(group)``, so a feature's
commands live beside nothing else's.

Errors: a user error (bad input, config, data, checkpoint, an unwritable folder) prints one
clear line and exits with status 1; anything else is a bug in msakit and says so (status 2).
``msakit --debug COMMAND`` (or ``MSAKIT_DEBUG=1``) shows the Python traceback of either.
"""

from __future__ import annotations

import errno
import importlib
import os
import pkgutil
import traceback

import click

from msakit import __version__


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that describe a problem with the user's input or environment."""
    from msakit.config import ConfigError
    from msakit.data.dataset import DataError
    from msakit.errors import MissingExtraError
    from msakit.lm import LanguageModelUnavailable as LanguageModelError
    from msakit.runfolder import CheckpointError, RunError

    types: list[type[BaseException]] = [ConfigError, DataError, CheckpointError, RunError,
                                        LanguageModelError, MissingExtraError, OSError]
    try:
        from msakit.extract.media import ExtractionError
        from msakit.predict import RunIncompatibleError

        types += [ExtractionError, RunIncompatibleError]
    except ImportError:  # pragma: no cover - optional extras missing
        pass
    return tuple(types)


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    elif isinstance(err, OSError) and err.errno == errno.ENOSPC:
        text = "No space left on device (writing the output folder); free some space and rerun"
    return text


class MsakitGroup(click.Group):
    """The top-level group: turns exceptions into one clear message (see the module doc)."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug")) or os.environ.get("MSAKIT_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except click.ClickException as err:
            if debug and err.__cause__ is not None:
                traceback.print_exception(err.__cause__)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except user_error_types() as err:
            if debug:
                raise
            raise click.ClickException(_one_line(err)) from err
        except Exception as err:
            if debug:
                raise
            bug = click.ClickException(
                f"internal error, a bug in msakit: {type(err).__name__}: {_one_line(err)}\n"
                "Rerun with `msakit --debug ...` for the traceback and report it.")
            bug.exit_code = 2
            raise bug from err


@click.group(cls=MsakitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="msakit")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
def main(debug: bool) -> None:
    """msakit: train, compare and apply multimodal sentiment analysis models."""


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(main)


_register_commands()
