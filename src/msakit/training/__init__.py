"""One generic trainer for every model, run directories, and multi-seed / multi-fold experiments."""

from msakit.training.experiment import evaluate_run, run_experiment
from msakit.training.trainer import Trainer, evaluate_model

__all__ = ["Trainer", "evaluate_model", "run_experiment", "evaluate_run"]
