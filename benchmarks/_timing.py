"""Shared by the benchmark scripts: time each full pass over a loader."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class TimedPasses:
    """Wraps a loader; every complete iteration appends its wall time to ``seconds``.

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before reading the clock, so that
    queued device work is counted in the pass that launched it.
    """

    def __init__(self, loader: Iterable, seconds: list[float] | None = None,
                 synchronize: Callable[[], None] | None = None):
        self.loader = loader
        self.seconds = [] if seconds is None else seconds
        self.synchronize = synchronize or (lambda: None)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self):
        self.synchronize()
        started = time.perf_counter()
        try:
            yield from self.loader
        finally:  # also a pass its consumer stops early (msakit's training stages take the
            # first batch_fraction of the batches with islice; MMSA's MMIM breaks at 50 % on
            # MOSEI): recorded when the iterator is closed, right after its last step
            self.synchronize()
            self.seconds.append(time.perf_counter() - started)
