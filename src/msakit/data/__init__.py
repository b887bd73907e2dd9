"""Readers, validation, tokenisation, batching and folds."""

from msakit.data.dataset import DataError, MSADataset, Split

__all__ = ["DataError", "MSADataset", "Split"]
