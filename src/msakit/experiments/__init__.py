"""Experiments researchers can trust: paired comparisons, tuning on validation, reports."""

from msakit.experiments.compare import (
    CompareError,
    cluster_bootstrap_ci,
    compare_runs,
    paired_permutation_p_value,
)

__all__ = ["CompareError", "cluster_bootstrap_ci", "compare_runs", "paired_permutation_p_value"]
