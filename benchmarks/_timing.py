"""Shared by the benchmark scripts: time each full pass over a loader."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable


class TimedPasses:
    """Wraps a loader; every complete iteration appends its wall time to ``seconds`` and the
    CPU time of this process during it to ``cpu_seconds`` (on a machine shared with other jobs
    a one-thread process's CPU time moves far less with the load than its wall time).

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before reading the clock, so that
    queued device work is counted in the pass that launched it. ``minor_faults``, when given,
    gets each pass's minor page faults of this process.
    """

    def __init__(self, loader: Iterable, seconds: list[float] | None = None,
                 synchronize: Callable[[], None] | None = None,
                 cpu_seconds: list[float] | None = None,
                 minor_faults: list[int] | None = None):
        self.loader = loader
        self.seconds = [] if seconds is None else seconds
        self.cpu_seconds = [] if cpu_seconds is None else cpu_seconds
        self.minor_faults = minor_faults
        self.synchronize = synchronize or (lambda: None)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self):
        self.synchronize()
        started, cpu_started = time.perf_counter(), time.process_time()
        faults_started = _minor_faults()
        try:
            yield from self.loader
        finally:  # also a pass its consumer stops early (msakit's training stages take the
            # first batch_fraction of the batches with islice; MMSA's MMIM breaks at 50 % on
            # MOSEI): recorded when the iterator is closed, right after its last step
            self.synchronize()
            self.seconds.append(time.perf_counter() - started)
            self.cpu_seconds.append(time.process_time() - cpu_started)
            if self.minor_faults is not None:
                self.minor_faults.append(_minor_faults() - faults_started)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(sides: dict, warmup: int, steps: int, alternate: bool) -> dict[str, list[float]]:
    """Seconds of each timed step per side: ``sides`` maps a name to a function that builds
    that side and returns its step function. ``alternate``: both sides built at once and a step
    of each in turn (load drift hits both alike); else one side after the other, each freed
    before the next is built. The first ``warmup`` steps of each side are not kept."""
    import time

    times: dict[str, list[float]] = {name: [] for name in sides}

    def timed(name, step, i):
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times[name].append(elapsed)
        print(f"{name} step {i + 1}: {elapsed * 1000:.0f} ms", flush=True)

    if alternate:
        built = {name: make() for name, make in sides.items()}
        for i in range(warmup + steps):
            for name, step in built.items():
                timed(name, step, i)
    else:
        for name, make in sides.items():
            step = make()
            for i in range(warmup + steps):
                timed(name, step, i)
            del step
    return times


def print_medians(times: dict[str, list[float]], ours: str, theirs: str) -> None:
    """Each side's median (min, max) step and the ratio ``ours / theirs`` of the medians."""
    import statistics

    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name}: median {medians[name] * 1000:.0f} ms over {len(values)} steps "
              f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})", flush=True)
    print(f"{ours} / {theirs}: {medians[ours] / medians[theirs]:.2f}")
