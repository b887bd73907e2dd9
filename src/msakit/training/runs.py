"""Moved to :mod:`msakit.runfolder`, the one owner of the run folder. The names that earlier
documentation pointed to here stay importable."""

from msakit.runfolder import CheckpointError, RunError, load_best_state

__all__ = ["CheckpointError", "RunError", "load_best_state"]
