"""Click helpers shared by the command modules."""

from __future__ import annotations

import os

import click


class MultiValueOption(click.Option):
    """An option taking one or more values after one flag: ``--seeds 1 2 3``.

    Click options take a fixed number of values; this one consumes every following token up
    to the next option.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)
        self._previous_parser_process = None
        self._eat_all_parser = None

    def add_to_parser(self, parser, ctx):
        def parser_process(value, state):
            values = [value]
            while state.rargs and not state.rargs[0].startswith("-"):
                values.append(state.rargs.pop(0))
            for item in values:
                self._previous_parser_process(item, state)

        result = super().add_to_parser(parser, ctx)
        for name in self.opts:
            our_parser = parser._long_opt.get(name) or parser._short_opt.get(name)
            if our_parser:
                self._eat_all_parser = our_parser
                self._previous_parser_process = our_parser.process
                our_parser.process = parser_process
                break
        return result


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
