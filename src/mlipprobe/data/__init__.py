"""Structures and labels: readers (extxyz, QM9), splits, statistics, the DataModule."""

from mlipprobe.data.datamodule import AtomsDataModule, Batch
from mlipprobe.data.qm9 import read_qm9
from mlipprobe.data.readers import DataError, KeyMap, TargetSpec, read_structures
from mlipprobe.data.splits import resolve_splits, split_indices

__all__ = [
    "AtomsDataModule",
    "Batch",
    "DataError",
    "KeyMap",
    "TargetSpec",
    "read_qm9",
    "read_structures",
    "resolve_splits",
    "split_indices",
]
