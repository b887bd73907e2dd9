"""``train.host_allocator``: glibc's malloc keeps freed memory, so a training step no longer
page-faults its large tensors in again (msakit.training.host_memory)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from msakit.training import host_memory

needs_glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                 reason="mallopt is glibc's: nothing to set elsewhere")

# Allocates and frees a 64 MiB tensor the way a training step does with its large activations
# and gradients, and prints the minor page faults of the last 10 of 30 allocations. With "keep"
# glibc's heap may grow by a few blocks first (PyTorch's aligned allocations do not always fit
# the hole a freed one leaves, while small allocations sit between them) before the holes join
# and are reused: about 8 allocations at most in trials on this project's machine.
_FAULTS_SCRIPT = """
import resource, sys
import torch
from msakit.training.host_memory import apply_host_allocator
changed = apply_host_allocator(sys.argv[1])
def allocate_and_touch():
    block = torch.empty(16 * 2**20)  # 64 MiB of float32
    block.fill_(1.0)
    return float(block[::4096].sum())
for _ in range(20):
    allocate_and_touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    allocate_and_touch()
print(changed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_BLOCK = 64 * 2**20 // 4096


def _faults_of_ten_allocations(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True,
                          text=True, check=True)
    changed, faults = done.stdout.split()
    return changed, int(faults)


@needs_glibc
def test_keep_reuses_freed_blocks_where_system_maps_them_again():
    changed, faults = _faults_of_ten_allocations("system")
    assert changed == "False"
    # glibc maps every 64 MiB block afresh: a fault per page (per 2 MiB with huge pages)
    assert faults > 10 * PAGES_PER_BLOCK // 600
    changed, faults_kept = _faults_of_ten_allocations("keep")
    assert changed == "True"
    assert faults_kept < PAGES_PER_BLOCK // 100  # the freed blocks are reused as they are
    assert faults_kept * 20 < faults


# Frees a 256 MiB tensor under "keep" and prints the resident MiB above the start: after the
# free (still mapped), then after release_freed_memory.
_RELEASE_SCRIPT = """
import os, torch
from msakit.training.host_memory import apply_host_allocator, release_freed_memory
def resident_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
apply_host_allocator("keep")
start = resident_mib()
block = torch.ones(64 * 2**20)  # 256 MiB of float32
del block
kept = resident_mib() - start
released = release_freed_memory()
print(kept, released, resident_mib() - start)
"""


@needs_glibc
def test_release_gives_the_kept_memory_back():
    done = subprocess.run([sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True, text=True,
                          check=True)
    kept, released, after = done.stdout.split()
    assert float(kept) > 200  # freed, but still resident: what "keep" is for
    assert released == "True"
    assert float(after) < 50


def test_an_experiment_releases_the_kept_memory_when_it_ends(mosi_word_aligned, tmp_path,
                                                              monkeypatch):
    import msakit.training.experiment as experiment_module
    from msakit.config import build_config
    from msakit.training import run_experiment

    releases = []
    monkeypatch.setattr(experiment_module, "release_freed_memory",
                        lambda: releases.append("released"))
    config = build_config("lf_dnn", [f"data.path={mosi_word_aligned}", "data.folds=2",
                                     f"run.output_dir={tmp_path}", "train.epochs=1",
                                     "model.freeze_language_model=true"])
    run_experiment(config, seeds=[1], progress=False)
    assert releases == ["released"]


def test_keep_is_applied_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setattr(host_memory, "glibc_mallopt",
                        lambda: lambda parameter, value: calls.append((parameter, value)) or 1)
    assert host_memory.apply_host_allocator("keep") is True
    assert host_memory.apply_host_allocator("keep") is False
    assert calls == [(host_memory.M_MMAP_MAX, 0),
                     (host_memory.M_TRIM_THRESHOLD, host_memory.NEVER_TRIM)]


def test_system_leaves_malloc_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setattr(host_memory, "glibc_mallopt", lambda: pytest.fail("mallopt called"))
    assert host_memory.apply_host_allocator("system") is False


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    assert host_memory.glibc_mallopt() is None
    assert host_memory.apply_host_allocator("keep") is False
    assert host_memory.release_freed_memory() is False


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="train.host_allocator must be 'keep' or 'system'"):
        host_memory.apply_host_allocator("always")


def test_config_field_defaults_to_keep_and_refuses_other_values():
    from msakit.config import build_config
    from msakit.errors import ConfigError

    assert build_config("lf_dnn", []).train.host_allocator == "keep"
    assert build_config("lf_dnn", ["train.host_allocator=system"]).train.host_allocator == "system"
    with pytest.raises((ConfigError, ValueError), match="host_allocator"):
        build_config("lf_dnn", ["train.host_allocator=never"])


def test_the_trainer_applies_the_configured_mode(mosi_word_aligned, tmp_path, monkeypatch):
    import msakit.training.trainer as trainer_module
    from msakit.config import build_config
    from msakit.training import run_experiment

    modes = []
    monkeypatch.setattr(trainer_module, "apply_host_allocator", modes.append)
    config = build_config("lf_dnn", [f"data.path={mosi_word_aligned}", "data.folds=2",
                                     f"run.output_dir={tmp_path}", "train.epochs=1",
                                     "model.freeze_language_model=true",
                                     "train.host_allocator=system"])
    run_experiment(config, seeds=[1], progress=False)
    assert modes == ["system", "system"]  # one training run per fold
