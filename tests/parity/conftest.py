"""Shared by the parity tests: the small random BERT their fixtures were generated with, and
the ``--parity-report FILE`` recording of their comparisons (``_recording.py``)."""

from __future__ import annotations

import sys

import _recording
import pytest


def pytest_configure(config):
    # before the test modules import ``_parity.assert_close`` (this conftest loads first)
    if config.getoption("parity_report", None):
        if hasattr(config, "workerinput"):  # a pytest-xdist worker
            raise pytest.UsageError("--parity-report records in one process: add -p no:xdist")
        _recording.start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _recording.set_current_test(item.nodeid)
    try:
        return (yield)
    finally:
        _recording.set_current_test(None)


def pytest_runtest_logreport(report):
    _recording.set_outcome(report.nodeid, report.when, report.outcome)


def pytest_collectreport(report):
    if report.failed:  # a test module that does not import: its model's row says so
        _recording.set_outcome(report.nodeid, "collect", "failed")


def pytest_sessionfinish(session):
    path = session.config.getoption("parity_report", None)
    if path and _recording.recording():
        _recording.stop(path, {"command": " ".join(["pytest", *sys.argv[1:]])})


@pytest.fixture(scope="module")
def small_bert(fixture, tmp_path_factory):
    """A folder holding a BERT of the module fixture's ``bert_config`` (``tiny_bert`` in the
    newer fixtures; its weights are then replaced by the fixture's, or are the generator's when
    it seeded them alike), so that msakit builds the model through its usual loader."""
    from transformers import BertConfig, BertModel

    config = fixture["bert_config"] if "bert_config" in fixture else fixture["tiny_bert"]
    folder = tmp_path_factory.mktemp("small_bert")
    BertModel(BertConfig(**config)).save_pretrained(folder)
    return str(folder)
