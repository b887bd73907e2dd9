"""The parity report: ``--parity-report`` records the parity tests' comparisons
(``tests/parity/_recording.py``) and ``tools/parity_report.py`` builds docs/parity.md from the
records, not from anything typed in."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "tests" / "parity"
sys.path.insert(0, str(PARITY))  # the parity helpers, as tests/parity/conftest.py imports them

import _parity  # noqa: E402
import _recording  # noqa: E402

_spec = importlib.util.spec_from_file_location("parity_report", ROOT / "tools" / "parity_report.py")
parity_report = sys.modules["parity_report"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity_report)

TOY = "tests/parity/test_toy_parity.py::"


@pytest.fixture
def recorder():
    if _recording.recording():
        pytest.skip("this session records the parity tests itself (--parity-report)")
    return _recording


def test_quantity_rules():
    quantity = _recording.quantity_of
    assert quantity("forward 3: prediction") == "predictions"
    assert quantity("step 2: gradients of fusion.weight") == "gradients"
    assert quantity("step 2: state of fusion.weight") == "parameters after steps"
    assert quantity("fusion.weight after 3 steps") == "parameters after steps"
    assert quantity("forward 1: loss task") == "loss terms"
    assert quantity("eval batch 0") == "eval-mode forward"
    assert quantity("forward 1: Feature_t") == "other"
    assert quantity("", TOY + "test_metrics_match_metrics_top[pred]") == "metrics"
    assert quantity("", TOY + "test_dropout_map_and_eval_forward") == "eval-mode forward"
    assert quantity("", TOY + "test_eval_forward", use_test_name=False) == "other"
    assert quantity("x.py:3: assert lrs == pytest.approx(lr)", TOY + "test_steps") == "other"


def test_recording_hooks_record_the_parity_comparisons_only_while_on(recorder, tmp_path):
    original = torch.testing.assert_close, torch.allclose, torch.equal, _parity.assert_close
    # off (no --parity-report): torch's own functions, nothing wrapped
    assert torch.allclose is torch._C._VariableFunctions.allclose
    assert torch.testing.assert_close.__module__ == "torch.testing._comparison"
    recorder.start()
    try:
        assert torch.testing.assert_close is not original[0]
        recorder.set_current_test(TOY + "test_training")
        expected = torch.tensor([0.5, -2.0], dtype=torch.float64)
        # _parity.assert_close (a test's call) and a helper's torch.testing.assert_close
        assert _parity.assert_close(expected + 3e-6, expected, "forward 1: prediction") > 0
        layer = torch.nn.Linear(2, 1).double()
        layer(expected[None]).sum().backward()
        official = {"w": layer.weight.grad + 2e-6, "b": layer.bias.grad.clone()}
        _parity.assert_official_gradients(layer, official, {"w": "weight", "b": "bias"}.get)
        recorder.record_close(torch.tensor(1.25), 1.25 + 4e-6, "forward 1: loss task", 1e-5)
        # not from tests/parity/: not a parity comparison
        torch.testing.assert_close(expected, expected)
        assert not torch.allclose(expected, expected + 1)
        with pytest.raises(AssertionError, match="max abs difference"):
            _parity.assert_close(expected + 1e-3, expected, "forward 2: prediction")
        recorder.set_outcome(TOY + "test_training", "call", "failed")
        path = tmp_path / "records.json"
        recorder.stop(path, {"command": "pytest toy"})
    finally:
        if recorder.recording():
            recorder.stop(tmp_path / "unused.json", {})
    assert (torch.testing.assert_close, torch.allclose, torch.equal,
            _parity.assert_close) == original  # off: the originals again

    data = json.loads(path.read_text())
    assert data["meta"]["command"] == "pytest toy"
    assert data["meta"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert data["tests"] == {TOY + "test_training": "failed"}
    records = {r["what"]: r for r in data["records"]}
    assert set(records) == {"forward 1: prediction", "gradient of weight", "gradient of bias",
                            "forward 1: loss task", "forward 2: prediction"}
    first = records["forward 1: prediction"]
    assert first["difference"] == pytest.approx(3e-6, rel=1e-6)
    assert first["scale"] == 2.0 and first["bound"] == 1e-5 and first["held"]
    assert first["quantity"] == "predictions" and first["test"] == TOY + "test_training"
    weight = records["gradient of weight"]
    assert weight["quantity"] == "gradients" and weight["via"] == "torch.testing.assert_close"
    assert weight["difference"] == pytest.approx(2e-6, rel=1e-6)
    assert weight["tolerance"] == "atol 1e-05" and records["gradient of bias"]["difference"] == 0
    assert records["forward 1: loss task"]["quantity"] == "loss terms"
    assert records["forward 1: loss task"]["difference"] == pytest.approx(4e-6, rel=1e-6)
    failed = records["forward 2: prediction"]
    assert not failed["held"] and failed["difference"] == pytest.approx(1e-3)


def _record(test, what, difference, scale, held=True, tolerance="atol 1e-05"):
    return {"test": TOY + test, "what": what, "quantity": _recording.quantity_of(what, test),
            "difference": difference, "scale": scale, "tolerance": tolerance, "bound": 1e-5,
            "held": held, "via": "torch.testing.assert_close"}


def test_report_is_built_from_the_records(tmp_path):
    torch.save({"official": {"repo": "someone/toy", "commit": "ab" * 20}}, tmp_path / "toy.pt")
    data = {
        "meta": {"command": "pytest", "cpu_capability": "AVX2", "torch": "2", "finished": "now"},
        "tests": {TOY + "test_training": "passed", TOY + "test_dropout_map_and_eval": "passed",
                  TOY + "test_other": "failed",
                  "tests/parity/test_broken_parity.py": "failed"},  # did not import
        "records": [
            _record("test_training", "forward 1: prediction", 2e-8, 0.5),
            _record("test_training", "forward 2: prediction", 3e-9, 0.01),
            _record("test_training", "step 1: gradients of w", 1e-12, 0.0),
            # a passed test's comparison outside its tolerance asserted a difference
            _record("test_training", "forward 3: prediction", 0.5, 0.5, held=False),
            _record("test_dropout_map_and_eval", "eval batch 0", 4e-9, 2.0,
                    tolerance="rtol 1e-05 x max(scale, 1e-2)"),
            _record("test_other", "forward 1: loss task", 3e-4, 1.0, held=False),
        ]}
    rows = parity_report.summarise(data, tmp_path)
    assert [r.model for r in rows] == ["broken", "toy"]
    broken, toy = rows
    assert broken.origin is None and broken.tests == {"(collecting the module)": "failed"}
    assert toy.origin == ("someone/toy", "ab" * 20)
    predictions = toy.quantities["predictions"]
    assert (predictions.count, predictions.max_difference) == (2, 2e-8)
    assert predictions.max_relative == pytest.approx(3e-7)  # 3e-9 / 0.01 beats 2e-8 / 0.5
    assert toy.quantities["gradients"].max_relative == pytest.approx(1e-10)  # scale floor 1e-2
    assert toy.quantities["loss terms"].failed == 1
    assert toy.dropout_map == "exact"

    page = parity_report.render(rows, data["meta"], "python tools/parity_report.py")
    line = next(x for x in page.splitlines() if x.startswith("| `toy`"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = next(x for x in page.splitlines() if x.startswith("| model"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    cell = dict(zip(columns, cells))
    assert cell["official code @ commit"] == \
        f"[someone/toy@abababa](https://github.com/someone/toy/tree/{'ab' * 20})"
    assert cell["tests passed"] == "2/3 (1 failed)"
    assert cell["predictions"] == "2.0e-08 / 3.0e-07<br>atol 1e-05 · n=2"
    assert cell["eval-mode forward"] == \
        "4.0e-09 / 2.0e-09<br>rtol 1e-05 x max(scale, 1e-2) · n=1"
    assert cell["dropout map"] == "exact"
    assert "FAILED (1)" in cell["loss terms"] and cell["metrics"] == ""
    assert "CPU path (`torch.backends.cpu.get_cpu_capability()`): AVX2" in page

    data["records"][0]["difference"] = 7e-7  # the page follows the records
    page = parity_report.render(parity_report.summarise(data, tmp_path), data["meta"], "x")
    assert "7.0e-07 / 1.4e-06<br>atol 1e-05 · n=2" in page


def test_tolerances_scaled_per_value_show_as_a_range():
    labels = {"atol 1e-05", "atol 1.2e-05", "atol 1.00087e-05"}
    assert parity_report._tolerances(labels) == "atol 1e-05 to 1.2e-05 (by scale)"
    assert parity_report._tolerances({"exact", "atol 1e-05"}) == "atol 1e-05; exact"


@pytest.mark.parametrize("layout", [
    {"official": {"repo": "a/b", "commit": "c" * 40, "files": []}},
    {"official": "a/b", "commit": "c" * 40},
    {"official_repo": "a/b", "official_commit": "c" * 40},
    {"official": {"repository": "a/b", "commit": "c" * 40}},
])
def test_fixture_origin_reads_every_layout(tmp_path, layout):
    torch.save(layout, tmp_path / "m.pt")
    assert parity_report.fixture_origin(tmp_path / "m.pt") == ("a/b", "c" * 40)


def test_every_parity_fixture_records_its_origin():
    models = [p.name[len("test_"):-len("_parity.py")] for p in PARITY.glob("test_*_parity.py")]
    assert len(models) >= 20
    for model in models:
        assert parity_report.fixture_origin(PARITY / f"{model}.pt") is not None, model


def test_a_parity_test_run_with_the_option_gives_its_row(tmp_path):
    """End to end: one small parity test (MMSA's metrics on real labels: ``pytest.approx`` and
    exact comparisons) run with ``--parity-report`` in a pytest process, as the tool runs it,
    then its report."""
    records = tmp_path / "records.json"
    test = "tests/parity/test_metrics_parity.py::test_metrics_match_metrics_top[mosi_real_labels]"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
         "--parity-report", str(records)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(records.read_text())
    assert data["tests"] == {test: "passed"}
    found = data["records"]
    assert {r["via"] for r in found} == {"pytest.approx", "record_close"}
    assert all(r["quantity"] == "metrics" and r["held"] and r["test"] == test for r in found)
    assert {r["what"] for r in found} >= {"metric Has0_acc_2", "metric Non0_F1_score"}
    approx = [r for r in found if r["via"] == "pytest.approx"]
    assert approx and all(r["tolerance"] == "rel 1e-12, abs 1e-15" for r in approx)
    (row,) = parity_report.summarise(data)
    assert row.model == "metrics" and row.origin[0] == "thuiar/MMSA"
    assert row.quantities["metrics"].count == len(found)
    assert row.quantities["metrics"].max_difference == max(r["difference"] for r in found)
