"""The data side of the trainer: published JSONL windows to `TrainSample`s (see trainer/data/builder.py)."""

from trainer.data.builder import build_sample
from trainer.data.dataset import SkippedSample, StreamDataset, open_dataset
from trainer.data.errors import SampleError
from trainer.data.sample import IGNORE_INDEX, TrainSample
from trainer.data.video import FrameBudget

__all__ = [
    "IGNORE_INDEX",
    "FrameBudget",
    "SampleError",
    "SkippedSample",
    "StreamDataset",
    "TrainSample",
    "build_sample",
    "open_dataset",
]
