"""Shared by the benchmark scripts: time each full pass over a loader."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class TimedPasses:
    """Wraps a loader; every complete iteration appends its wall time to ``seconds`` and the
    CPU time of this process during it to ``cpu_seconds`` (on a machine shared with other jobs
    a one-thread process's CPU time moves far less with the load than its wall time).

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before reading the clock, so that
    queued device work is counted in the pass that launched it.
    """

    def __init__(self, loader: Iterable, seconds: list[float] | None = None,
                 synchronize: Callable[[], None] | None = None,
                 cpu_seconds: list[float] | None = None):
        self.loader = loader
        self.seconds = [] if seconds is None else seconds
        self.cpu_seconds = [] if cpu_seconds is None else cpu_seconds
        self.synchronize = synchronize or (lambda: None)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self):
        self.synchronize()
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            yield from self.loader
        finally:  # also a pass its consumer stops early (msakit's training stages take the
            # first batch_fraction of the batches with islice; MMSA's MMIM breaks at 50 % on
            # MOSEI): recorded when the iterator is closed, right after its last step
            self.synchronize()
            self.seconds.append(time.perf_counter() - started)
            self.cpu_seconds.append(time.process_time() - cpu_started)
