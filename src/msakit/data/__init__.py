"""Readers, validation, tokenisation, batching and folds."""

from msakit.data.collate import SplitDataset, collate, make_loader
from msakit.data.dataset import DataError, MSADataset, Split
from msakit.data.folds import Fold, dataset_splits, grouped_folds
from msakit.data.readers import load_dataset
from msakit.data.safe_pickle import safe_load
from msakit.data.validation import check_feature_dims, feature_dims_for

__all__ = [
    "DataError",
    "Fold",
    "MSADataset",
    "Split",
    "SplitDataset",
    "check_feature_dims",
    "collate",
    "dataset_splits",
    "feature_dims_for",
    "grouped_folds",
    "load_dataset",
    "make_loader",
    "safe_load",
]
