"""The task zoo: task families with meta-training and held-out ranges (no downloads).

Families (``FAMILIES``):

- ``mlp_digits``: MLP classifier on scikit-learn's bundled 8x8 digits.
- ``cnn_digits``: small CNN (optionally with BatchNorm) on the same digits as 1x8x8 images.
- ``teacher_student``: MLP regression of a random teacher MLP, generated data.
- ``sequence``: stacked LSTMs on a generated delayed-copy task.
- ``transformer_seq``: a small pre-norm transformer encoder (token and learned position
  embeddings) on generated copy, sort and count tasks, the task drawn per sample.
- ``resmlp``: residual MLPs with LayerNorm and dropout on tabular classification and regression:
  scikit-learn's bundled breast_cancer, wine, digits and diabetes, and per-task
  ``make_classification`` / ``make_regression`` sets, the dataset drawn per sample.

Each family samples depth, width, initial LR (log-uniform), batch size and optimizer from its
``train`` ranges for meta-training, or from its ``heldout`` ranges (deeper, wider, harder) for
generalisation tests. Optimizers (``OPTIMIZERS``): ``adam``, ``sgd`` (momentum 0.9), ``adamw``
(weight decay 0.01) and ``sgd_plain`` (no momentum). The four original families draw from Adam and
SGD with momentum only (``ADAM_AND_MOMENTUM_SGD``, the ranges' default), so their tasks are those
meta-training and the committed evaluations used; the two new families draw from all four. A YAML ``family:`` section
(``{name, train, heldout}``) maps onto :func:`make_family`; ``ganno_lightning.envs.config`` reads it.

Example::

    >>> family = make_family("mlp_digits", train={"lr": [1e-3, 1e-2]})
    >>> task = family.sample(torch.Generator().manual_seed(0), split="train")
    >>> task.info["family"], 1e-3 <= task.info["lr"] <= 1e-2
    ('mlp_digits', True)
    >>> make_family("resnet")
    Traceback (most recent call last):
    ...
    ValueError: Unknown task family `family.name` 'resnet'. Known families: cnn_digits, mlp_digits, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ganno_lightning.envs.tasks.base import ZooFamily, ZooModule, make_optimizer
from ganno_lightning.envs.tasks.cnn_digits import CNNDigitsFamily, CNNRanges, DigitsCNN
from ganno_lightning.envs.tasks.mlp_digits import DigitsMLP, MLPDigitsFamily
from ganno_lightning.envs.tasks.ranges import (
    ADAM_AND_MOMENTUM_SGD,
    ADAMW_WEIGHT_DECAY,
    OPTIMIZERS,
    SGD_MOMENTUM,
    TaskRanges,
)
from ganno_lightning.envs.tasks.resmlp import ResMLPFamily, ResMLPRanges, TabularResMLP
from ganno_lightning.envs.tasks.sequence import (
    DelayedCopyLSTM,
    SequenceFamily,
    SequenceRanges,
)
from ganno_lightning.envs.tasks.teacher_student import (
    StudentMLP,
    TeacherStudentFamily,
    TeacherStudentRanges,
)
from ganno_lightning.envs.tasks.transformer_seq import (
    SequenceTransformer,
    TransformerSeqFamily,
    TransformerSeqRanges,
)

#: Family name -> family class; the names used in configs (``family.name``).
FAMILIES: dict[str, type[ZooFamily]] = {
    cls.name: cls
    for cls in (
        MLPDigitsFamily, CNNDigitsFamily, TeacherStudentFamily, SequenceFamily, TransformerSeqFamily, ResMLPFamily
    )
}


def make_family(
    name: str,
    train: TaskRanges | Mapping[str, Any] | None = None,
    heldout: TaskRanges | Mapping[str, Any] | None = None,
    *,
    prefix: str = "family",
    lr_sampling: str = "ranges",
) -> ZooFamily:
    """Build the family registered as ``name`` with optional ``train``/``heldout`` range overrides.

    Args:
        name: A key of :data:`FAMILIES`.
        train: Meta-training ranges laid over the family's defaults (mapping, omegaconf section or
            ``TaskRanges``), or ``None`` for the defaults.
        heldout: Held-out ranges, same forms.
        prefix: Dotted config path of the family section, for error messages.
        lr_sampling: ``"ranges"`` draws a task's LR from its ``lr`` range; ``"around_best"`` from
            0.1x to 10x its cell's calibrated best LR (:mod:`ganno_lightning.envs.tasks.best_lr`).

    Raises:
        ValueError: For an unknown family (listing the known ones) or invalid ranges (naming the field).
    """
    if name not in FAMILIES:
        close = difflib.get_close_matches(str(name), list(FAMILIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown task family `{prefix}.name` {name!r}. Known families: {', '.join(sorted(FAMILIES))}.{hint}"
        )
    return FAMILIES[name](train=train, heldout=heldout, prefix=prefix, lr_sampling=lr_sampling)


__all__ = [
    "ADAMW_WEIGHT_DECAY",
    "ADAM_AND_MOMENTUM_SGD",
    "FAMILIES",
    "OPTIMIZERS",
    "SGD_MOMENTUM",
    "CNNDigitsFamily",
    "CNNRanges",
    "DelayedCopyLSTM",
    "DigitsCNN",
    "DigitsMLP",
    "MLPDigitsFamily",
    "ResMLPFamily",
    "ResMLPRanges",
    "SequenceFamily",
    "SequenceRanges",
    "SequenceTransformer",
    "StudentMLP",
    "TabularResMLP",
    "TaskRanges",
    "TeacherStudentFamily",
    "TeacherStudentRanges",
    "TransformerSeqFamily",
    "TransformerSeqRanges",
    "ZooFamily",
    "ZooModule",
    "make_family",
    "make_optimizer",
]
