"""Records the differences the parity tests compare, for ``tools/parity_report.py``.

Off unless pytest runs with ``--parity-report FILE`` (``tests/conftest.py``); then, for the tests
under ``tests/parity/`` only, every comparison made *from a file in this folder* (a test module
or a helper such as ``_parity.py``/``_mmsa_parity.py``) is recorded as

    test (node id), what (the message, else the call site's source), quantity, difference (max
    abs difference), scale (max abs of the expected value), tolerance (its description), bound
    (the absolute difference it allowed at that scale), held (whether it was within), via

and written to FILE as JSON at the end of the session, with each test's outcome. What is hooked
(each wrapper calls the original and returns or raises exactly what it does):

- ``torch.testing.assert_close``, ``torch.allclose``, ``torch.equal`` (exact),
  ``numpy.testing.assert_allclose`` and ``pytest.approx`` comparisons, called from this folder;
- ``_parity.assert_close`` (patched before the test modules import it);
- comparisons a test writes itself (``assert abs(a - b) < TOLERANCE``): the line before calls
  :func:`record_close` (a no-op when recording is off).

A comparison that did not hold in a test that passed asserted a *difference* (``assert not
torch.allclose(...)``); the report leaves those out. Dropout maps are compared with ``==`` on
``(rate, shape)`` lists: the report reads them from the test names (see ``tools/parity_report.py``).

Quantity of a record (:func:`quantity_of`): the first of :data:`QUANTITY_RULES` whose pattern
finds the message (or call-site source), lower-cased; else the test function's name (not for
``torch.equal``: its exact checks are set-up checks unless their source says otherwise); else
"other".
"""

from __future__ import annotations

import datetime
import functools
import json
import linecache
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

QUANTITIES = ("predictions", "loss terms", "gradients", "parameters after steps",
              "eval-mode forward", "dropout map", "metrics", "other")
#: (quantity, regular expression): the first that finds the message decides
QUANTITY_RULES = (
    ("other", r"\blrs?\b|learning rate|schedul"),  # learning-rate schedules
    ("eval-mode forward", r"(?<![a-z])eval"),
    ("gradients", r"grad"),
    ("parameters after steps",
     r"\bstate\b|\bparameters?\b|after \d+ steps|\bstep \d+: |_steps(_|$)"),
    ("loss terms", r"loss|criterion|\btotal\b|reconstruction|attraction|\btask"),
    ("predictions", r"pred"),
    ("metrics", r"metric"),
)

_session: dict | None = None  # None: recording is off


def quantity_of(what: str, test: str = "", use_test_name: bool = True) -> str:
    """The quantity a comparison belongs to, from its message or call-site source (its
    ``file.py:line:`` prefix aside), else (``use_test_name``) from the test function's name."""
    texts = [re.sub(r"^[\w.]+\.py:\d+: ", "", what)]
    if use_test_name:
        texts.append(test.rpartition("::")[2].partition("[")[0])
    for text in (t.lower() for t in texts):
        for quantity, pattern in QUANTITY_RULES:
            if re.search(pattern, text):
                return quantity
    return "other"


def recording() -> bool:
    return _session is not None


def start() -> None:
    """Starts recording: installs the hooks (undone by :func:`stop`)."""
    global _session
    if _session is not None:
        return
    _session = {"records": [], "tests": {}, "current": None, "undo": []}
    _install()


def stop(path: Path | str, meta: dict) -> None:
    """Writes what was recorded to ``path`` (JSON) and removes the hooks."""
    global _session
    if _session is None:
        return
    session, _session = _session, None
    for undo in reversed(session["undo"]):
        undo()
    data = {"meta": {**meta, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "torch": torch.__version__,
                     "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                         timespec="seconds")},
            "tests": session["tests"], "records": session["records"]}
    Path(path).write_text(json.dumps(data, indent=0) + "\n")


def set_current_test(nodeid: str | None) -> None:
    if _session is not None:
        _session["current"] = nodeid


def set_outcome(nodeid: str, when: str, outcome: str) -> None:
    """A test's outcome from its setup/call/teardown reports (a failure in any phase wins)."""
    if _session is None:
        return
    tests = _session["tests"]
    if outcome == "failed" or (outcome == "skipped" and tests.get(nodeid) != "failed"):
        tests[nodeid] = outcome
    elif when == "call":
        tests.setdefault(nodeid, "passed")


def record_close(actual, expected, what: str, tolerance: float, description: str | None = None
                 ) -> None:
    """Records a comparison the caller asserts itself: ``actual`` vs ``expected`` (numbers or
    tensors) within the absolute ``tolerance`` (``description`` says how it was chosen, e.g.
    relative to a scale). A no-op when recording is off."""
    if _session is None:
        return
    difference, scale = _difference(actual, expected)
    _add(sys._getframe(1), what, difference, scale,
         description or f"atol {tolerance:g}", tolerance,
         None if difference is None else difference <= tolerance, "record_close")


# ---------------------------------------------------------------------------------------------

def _from_here(frame) -> bool:
    return frame is not None and _in_this_folder(frame.f_code.co_filename)


@functools.cache
def _in_this_folder(filename: str) -> bool:
    return Path(filename).resolve().parent == HERE


def _call_site(frame) -> str:
    """The source of the statement at ``frame``'s line (continued while brackets are open)."""
    filename, line = frame.f_code.co_filename, frame.f_lineno
    text = linecache.getline(filename, line).strip()
    for extra in range(1, 6):
        if text.count("(") + text.count("[") <= text.count(")") + text.count("]"):
            break
        text += " " + linecache.getline(filename, line + extra).strip()
    return f"{Path(filename).name}:{line}: {text}"


def _as_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    if isinstance(value, dict):
        return np.concatenate([_as_array(value[k]).ravel() for k in sorted(value)] or [[]])
    return np.asarray(value, dtype=np.float64)


def _difference(actual, expected) -> tuple[float | None, float | None]:
    """(max abs difference, max abs of ``expected``); ``None``s where they cannot be taken."""
    try:
        ours, theirs = _as_array(actual), _as_array(expected)
        if theirs.size == 0:
            return (0.0, 0.0) if ours.size == 0 else (None, None)
        scale = float(np.abs(theirs).max())
        difference = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape or \
            ours.size == 1 or theirs.size == 1 else None
    except (TypeError, ValueError, RuntimeError):
        return None, None
    return difference, scale


def _clean(value):
    return None if value is None or math.isnan(value) else value


def _add(frame, what, difference, scale, tolerance, bound, held, via) -> None:
    session = _session
    if session is None or session["current"] is None:
        return
    test = session["current"]
    what = what or _call_site(frame)
    session["records"].append({
        "test": test, "what": what,
        # exact checks without a message (weights loaded, frozen weights unchanged) belong to
        # no quantity of the test's name
        "quantity": quantity_of(what, test, use_test_name=via != "torch.equal"),
        "difference": _clean(difference), "scale": _clean(scale), "tolerance": tolerance,
        "bound": _clean(bound), "held": held, "via": via})


def _message(msg, default: str = "") -> str:
    if callable(msg):
        try:
            return str(msg("")).rstrip(": ")
        except Exception:  # a message builder expecting something else: the call site then
            return default
    return str(msg) if msg else default


def _torch_tolerance(expected, rtol, atol) -> tuple[float, float]:
    if rtol is None and atol is None:
        dtype = expected.dtype if isinstance(expected, torch.Tensor) else torch.float64
        return {torch.float64: (1e-7, 1e-7), torch.float32: (1.3e-6, 1e-5),
                torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5)}.get(dtype, (0, 0))
    return float(rtol or 0), float(atol or 0)


def _describe(rtol: float, atol: float) -> str:
    return " + ".join(part for part in (f"atol {atol:g}" if atol else "",
                                        f"rtol {rtol:g}" if rtol else "") if part) or "exact"


def _bound(rtol, atol, scale):
    return None if scale is None else atol + rtol * scale


def _patch(owner, name: str, wrapper) -> None:
    original = getattr(owner, name)
    setattr(owner, name, wrapper)
    _session["undo"].append(lambda: setattr(owner, name, original))


def _install() -> None:
    import _parity
    import pytest

    assert_close = torch.testing.assert_close

    @functools.wraps(assert_close)
    def recording_assert_close(actual, expected, *args, **kwargs):
        frame = sys._getframe(1)
        if not _from_here(frame):
            return assert_close(actual, expected, *args, **kwargs)
        rtol, atol = _torch_tolerance(expected, kwargs.get("rtol"), kwargs.get("atol"))
        difference, scale = _difference(actual, expected)
        what = _message(kwargs.get("msg"))
        try:
            result = assert_close(actual, expected, *args, **kwargs)
        except BaseException:
            _add(frame, what, difference, scale, _describe(rtol, atol),
                 _bound(rtol, atol, scale), False, "torch.testing.assert_close")
            raise
        _add(frame, what, difference, scale, _describe(rtol, atol), _bound(rtol, atol, scale),
             True, "torch.testing.assert_close")
        return result

    allclose = torch.allclose

    @functools.wraps(allclose)
    def recording_allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
        result = allclose(input, other, rtol=rtol, atol=atol, equal_nan=equal_nan)
        frame = sys._getframe(1)
        if _from_here(frame):
            difference, scale = _difference(input, other)
            _add(frame, "", difference, scale, _describe(rtol, atol),
                 _bound(rtol, atol, scale), bool(result), "torch.allclose")
        return result

    equal = torch.equal

    @functools.wraps(equal)
    def recording_equal(input, other):
        result = equal(input, other)
        frame = sys._getframe(1)
        if _from_here(frame):
            difference, scale = _difference(input, other)
            _add(frame, "", difference, scale, "exact", 0.0, bool(result), "torch.equal")
        return result

    numpy_allclose = np.testing.assert_allclose

    @functools.wraps(numpy_allclose)
    def recording_numpy_allclose(actual, desired, rtol=1e-07, atol=0, *args, **kwargs):
        frame = sys._getframe(1)
        if not _from_here(frame):
            return numpy_allclose(actual, desired, rtol, atol, *args, **kwargs)
        difference, scale = _difference(actual, desired)
        what = _message(kwargs.get("err_msg", args[1] if len(args) > 1 else ""))
        held = False
        try:
            result = numpy_allclose(actual, desired, rtol, atol, *args, **kwargs)
            held = True
            return result
        finally:
            _add(frame, what, difference, scale, _describe(rtol, atol),
                 _bound(rtol, atol, scale), held, "numpy.testing.assert_allclose")

    approx = pytest.approx

    @functools.wraps(approx)
    def recording_approx(expected, rel=None, abs=None, nan_ok=False):
        result = approx(expected, rel=rel, abs=abs, nan_ok=nan_ok)
        if _from_here(sys._getframe(1)):
            result.__class__ = _recording_approx_class(type(result))
        return result

    parity_assert_close = _parity.assert_close

    @functools.wraps(parity_assert_close)
    def recording_parity_assert_close(actual, expected, what):
        difference, scale = _difference(actual, expected)
        held = False
        try:
            result = parity_assert_close(actual, expected, what)
            held = True
            return result
        finally:
            _add(sys._getframe(1), what, difference, scale, f"atol {_parity.ATOL:g}",
                 _parity.ATOL, held, "_parity.assert_close")

    _patch(torch.testing, "assert_close", recording_assert_close)
    _patch(torch, "allclose", recording_allclose)
    _patch(torch, "equal", recording_equal)
    _patch(np.testing, "assert_allclose", recording_numpy_allclose)
    _patch(pytest, "approx", recording_approx)
    _patch(_parity, "assert_close", recording_parity_assert_close)


@functools.cache
def _recording_approx_class(cls):
    """``cls`` (a ``pytest.approx`` class) whose ``==`` also records the comparison."""

    def __eq__(self, actual):
        held = cls.__eq__(self, actual)
        frame = sys._getframe(1)
        if _from_here(frame):
            difference, scale = _difference(actual, self.expected)
            rel, absolute = self.rel, self.abs
            description = ", ".join(f"{n} {v:g}" for n, v in (("rel", rel), ("abs", absolute))
                                    if v is not None) or "pytest.approx defaults"
            bound = None if scale is None else (absolute or 0.0) + (rel or 0.0) * scale
            _add(frame, "", difference, scale, description, bound, bool(held), "pytest.approx")
        return held

    return type(cls.__name__, (cls,), {"__eq__": __eq__, "__hash__": None})
