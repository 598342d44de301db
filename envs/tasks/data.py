"""Datasets of the zoo: bundled with scikit-learn or generated, built once per process.

Nothing is downloaded. Tensors returned here are cached and shared by every task in the process:
callers index them but never modify them in place.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from ganno_lightning.examples.digits import load_digits_split

#: Seed of the fixed digits train/validation split; part of the dataset's definition.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2
#: 1797 images minus the 359 held for validation; known without loading (families check batch sizes
#: at construction, and importing scikit-learn there would slow every family's creation).
DIGITS_TRAIN_SIZE = 1438


class TrainValData(NamedTuple):
    """Training and validation tensors of one dataset."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@functools.lru_cache(maxsize=1)
def digits() -> TrainValData:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), split 80/20 by a fixed seed.

    The one digits loader (:func:`ganno_lightning.examples.digits.load_digits_split`) with the
    zoo's split: validation first, then training. Inputs are flat float32 vectors of 64 pixels,
    centred per pixel and scaled by one global standard deviation, both from the training part (so
    validation statistics do not leak in). Labels are int64 class indices.

    Example::

        >>> d = digits()
        >>> d.x_train.shape, d.x_val.shape, d.y_train.dtype
        (torch.Size([1438, 64]), torch.Size([359, 64]), torch.int64)
    """
    split = load_digits_split(DIGITS_VAL_FRACTION, DIGITS_SPLIT_SEED, standardize="global")
    if len(split.x_train) != DIGITS_TRAIN_SIZE:
        raise RuntimeError(
            f"scikit-learn's digits changed: {len(split.x_train)} training images, expected {DIGITS_TRAIN_SIZE}."
        )
    return TrainValData(split.x_train, split.y_train, split.x_val, split.y_val)
