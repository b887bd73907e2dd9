"""The parity table: for every model with a parity test (``tests/parity/test_<model>_parity.py``),
the official code and commit its fixture was recorded from, its tests passed, and per quantity
(predictions, loss terms, gradients, ...) the largest difference the tests found.

    python tools/parity_report.py                    # runs pytest tests/parity, writes docs/parity.md
    python tools/parity_report.py --markdown         # prints the page instead
    python tools/parity_report.py --records FILE     # from a recorded run instead of running pytest
    python tools/parity_report.py -- -k "tfn or lmf" # extra pytest arguments

The numbers come from ``pytest tests/parity --parity-report FILE`` (``tests/parity/_recording.py``
records every comparison: max abs difference, scale, tolerance, quantity); nothing is typed in
here. A model's row appears when its test module does: new models need no change to this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARITY_TESTS = ROOT / "tests" / "parity"
DEFAULT_OUTPUT = ROOT / "docs" / "parity.md"
sys.path.insert(0, str(PARITY_TESTS))

from _recording import QUANTITIES  # noqa: E402  (the recorder owns the quantities: the columns)

MODULE = re.compile(r"(?:^|/)test_(?P<model>\w+?)_parity\.py(?:::(?P<test>.*))?$")
#: the relative difference divides by max(scale, SCALE_FLOOR): a value near 0 (a gradient of
#: 1e-9) carries the float32 rounding of the larger numbers it came from, not its own
SCALE_FLOOR = 1e-2


@dataclass
class Quantity:
    """The comparisons of one quantity of one model."""

    count: int = 0
    max_difference: float = 0.0
    max_relative: float = 0.0  # difference / max(scale, SCALE_FLOOR)
    tolerances: set[str] = field(default_factory=set)
    failed: int = 0  # comparisons outside their tolerance, in tests that failed

    def add(self, record: dict, failed_test: bool) -> None:
        difference, scale = record["difference"], record["scale"]
        self.count += 1
        self.max_difference = max(self.max_difference, difference)
        self.max_relative = max(self.max_relative, difference / max(scale or 0.0, SCALE_FLOOR))
        self.tolerances.add(record["tolerance"])
        self.failed += bool(failed_test and not record["held"])


@dataclass
class ModelRow:
    model: str
    origin: tuple[str, str] | None  # (repository, commit)
    tests: dict[str, str] = field(default_factory=dict)  # test name -> outcome
    quantities: dict[str, Quantity] = field(default_factory=dict)
    dropout_map: str | None = None  # "exact" / "FAILED" (from the tests named dropout_map)


def fixture_origin(path: Path) -> tuple[str, str] | None:
    """(repository, commit) a parity fixture records; the three layouts the fixtures use:
    ``official: {repo, commit}``, ``official: "owner/name"`` + ``commit``, and
    ``official_repo`` + ``official_commit``."""
    import torch

    if not path.exists():
        return None
    fixture = torch.load(path, weights_only=True, map_location="cpu")
    official = fixture.get("official")
    if isinstance(official, dict) and "commit" in official:
        repo = official.get("repo", official.get("repository"))
        if repo:
            return repo, official["commit"]
    if isinstance(official, str) and "commit" in fixture:
        return official, fixture["commit"]
    if "official_repo" in fixture and "official_commit" in fixture:
        return fixture["official_repo"], fixture["official_commit"]
    return None


def summarise(data: dict, fixtures: Path = PARITY_TESTS) -> list[ModelRow]:
    """One row per parity test module of the recorded run ``data`` (``--parity-report``'s
    JSON), its fixture ``<fixtures>/<model>.pt`` giving the official code and commit.

    A comparison that did not hold counts only in a failed test (where it failed the test); in
    a passed test it asserted a difference (``assert not torch.allclose(...)``), not parity.
    The dropout map is "exact" when every test named ``*dropout_map*`` passed (the maps are
    compared with ``==``)."""
    rows: dict[str, ModelRow] = {}

    def row(nodeid: str) -> ModelRow | None:
        match = MODULE.search(nodeid)
        if match is None:
            return None
        model = match["model"]
        if model not in rows:
            rows[model] = ModelRow(model, fixture_origin(fixtures / f"{model}.pt"))
        return rows[model]

    for nodeid, outcome in data["tests"].items():
        if (target := row(nodeid)) is not None:
            target.tests[MODULE.search(nodeid)["test"] or "(collecting the module)"] = outcome
    for record in data["records"]:
        target = row(record["test"])
        if target is None or record["difference"] is None or record["held"] is None:
            continue
        failed_test = data["tests"].get(record["test"]) == "failed"
        if not record["held"] and not failed_test:
            continue
        target.quantities.setdefault(record["quantity"], Quantity()).add(record, failed_test)
    for target in rows.values():
        maps = [outcome for test, outcome in target.tests.items() if "dropout_map" in test]
        if maps:
            target.dropout_map = "exact" if all(o == "passed" for o in maps) else "FAILED"
    return [rows[m] for m in sorted(rows)]


def _number(value: float | None) -> str:
    return "–" if value is None else "0" if value == 0 else f"{value:.1e}"


def _cell(row: ModelRow, quantity: str) -> str:
    if quantity == "dropout map" and row.dropout_map and quantity not in row.quantities:
        return row.dropout_map
    found = row.quantities.get(quantity)
    if found is None:
        return ""
    text = f"{_number(found.max_difference)} / {_number(found.max_relative)}"
    if found.failed:
        text = f"**{text} FAILED ({found.failed})**"
    return f"{text}<br>{_tolerances(found.tolerances)} · n={found.count}"


def _tolerances(labels: set[str]) -> str:
    """The tolerances a quantity's comparisons used; absolute ones scaled per value (``atol
    1e-05 * max(1, scale)``) as their range."""
    if len(labels) <= 2:
        return "; ".join(sorted(labels))
    absolute = [re.fullmatch(r"atol (\S+)", label) for label in labels]
    if all(absolute):
        values = sorted(float(m[1]) for m in absolute)
        return f"atol {values[0]:.2g} to {values[-1]:.2g} (by scale)"
    shown = sorted(labels)
    return "; ".join(shown[:2]) + f"; +{len(shown) - 2} more"


def _origin(origin: tuple[str, str] | None) -> str:
    if origin is None:
        return "not recorded in the fixture"
    repo, commit = origin
    return f"[{repo}@{commit[:7]}](https://github.com/{repo}/tree/{commit})"


def _passed(tests: dict[str, str]) -> str:
    passed = sum(o == "passed" for o in tests.values())
    others = {o: sum(v == o for v in tests.values()) for o in ("failed", "skipped")}
    extra = ", ".join(f"{n} {o}" for o, n in others.items() if n)
    return f"{passed}/{len(tests)}" + (f" ({extra})" if extra else "")


def render(rows: list[ModelRow], meta: dict, command: str) -> str:
    """docs/parity.md: how the table was made, the table, and how to read it."""
    tests = [o for r in rows for o in r.tests.values()]
    lines = [
        "# Parity with the official code: the differences",
        "",
        "Every parity test (`tests/parity/test_<model>_parity.py`) replays a fixture recorded "
        "from the official code (`tools/parity/<model>.py`) and asserts msakit's numbers within "
        "a tolerance; this page lists the largest difference each kind of number showed. "
        "What is compared and why: [models.md](models.md#parity-status-of-every-model).",
        "",
        f"- Made by: `{command}`",
        f"- Date: {meta.get('finished', '?')} (UTC); torch {meta.get('torch', '?')}; CPU path "
        f"(`torch.backends.cpu.get_cpu_capability()`): {meta.get('cpu_capability', '?')}",
        f"- Tests: {sum(o == 'passed' for o in tests)} of {len(tests)} passed",
        "",
        "Each cell: **max abs difference / max relative difference** (the difference divided by "
        f"the scale, the max abs of the official value compared, or by {SCALE_FLOOR:g} where the "
        "scale is smaller: near-zero values carry the rounding of the larger numbers they come "
        "from), over all the comparisons of that kind; below, the "
        "tolerance(s) the tests used and n, the number of comparisons (a comparison is one "
        "tensor or number: e.g. one parameter's gradient at one step).",
        "",
        "| model | official code @ commit | tests passed | "
        + " | ".join(QUANTITIES) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in QUANTITIES) + " |",
    ]
    for row in rows:
        cells = [f"`{row.model}`", _origin(row.origin), _passed(row.tests)]
        cells += [_cell(row, q) for q in QUANTITIES]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "How a comparison is counted (`tests/parity/_recording.py`):",
        "",
        "- recorded: every `torch.testing.assert_close`, `torch.allclose`, `torch.equal` "
        "(tolerance \"exact\"), `numpy.testing.assert_allclose` and `pytest.approx` comparison "
        "made from `tests/parity/`, `_parity.assert_close`, and the scalar comparisons a test "
        "writes itself, which call `record_close` (loss values);",
        "- quantity: the first of these that the comparison's message (else its source line, "
        "else the test function's name) mentions: *lr*/*schedule* → other, *eval* → eval-mode "
        "forward, *grad* → gradients, *state*/*parameter*/*after N steps*/*step N:*/*_steps* "
        "→ parameters after steps, *loss*/*criterion*/*total*/*reconstruction*/*attraction*/"
        "*task* → loss terms, *pred* → predictions, *metric* → metrics; anything else "
        "(unimodal features and heads, Self-MM's ULGM labels, MMIM's MI terms) is \"other\"; "
        "`torch.equal` checks without such a word (weights loaded or kept frozen) are "
        "\"other\" whatever the test's name;",
        "- dropout map: compared with `==` on the (rate, input shape) of every dropout call, "
        "so \"exact\" when every test named `*dropout_map*` passed;",
        "- a comparison outside its tolerance in a test that passed asserted a difference "
        "(`assert not torch.allclose(...)`) and is left out; one in a failed test is shown "
        "in **bold** with FAILED;",
        "",
        "Regenerate with `python tools/parity_report.py` (a few minutes; single process).",
        "",
    ]
    return "\n".join(lines)


def run_parity_tests(records: Path, pytest_args: list[str]) -> tuple[list[str], int]:
    """``pytest tests/parity`` with the recording on; returns the command and its exit code."""
    command = [sys.executable, "-m", "pytest", "tests/parity", "-q", "-p", "no:xdist",
               "-p", "no:cacheprovider", "--continue-on-collection-errors",
               "--parity-report", str(records), *pytest_args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # pytest's output on stderr: stdout is the page's with --markdown
    return command, subprocess.run(command, cwd=ROOT, env=env, stdout=sys.stderr).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="the page to write (default docs/parity.md)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the page to stdout instead of writing it")
    parser.add_argument("--records", type=Path,
                        help="a recorded run (pytest tests/parity --parity-report FILE) to read "
                             "instead of running the tests")
    parser.add_argument("--keep-records", type=Path,
                        help="where to keep the run's records (default: a temporary file)")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args(argv)

    this = shlex.join(["python", "tools/parity_report.py",
                       *(argv if argv is not None else sys.argv[1:])])
    status = 0
    if args.records is not None:
        if not args.records.is_file():
            parser.error(f"--records {args.records}: no such file")
        data = json.loads(args.records.read_text())
        command = f"{this} (records of: {data['meta'].get('command', '?')})"
    else:
        with tempfile.TemporaryDirectory() as folder:
            records = args.keep_records or Path(folder) / "parity-records.json"
            pytest_command, status = run_parity_tests(records, args.pytest_args)
            if not records.is_file():
                print(f"pytest wrote no records (exit {status})", file=sys.stderr)
                return status or 1
            data = json.loads(records.read_text())
        shown = ["python", *pytest_command[1:]]
        shown[shown.index(str(records))] = "RECORDS"
        command = f"{this} (ran: {shlex.join(shown)})"
    data["meta"].setdefault("finished", datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"))
    page = render(summarise(data), data["meta"], command)
    if args.markdown:
        sys.stdout.write(page)
    else:
        args.output.write_text(page)
        print(f"wrote {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
