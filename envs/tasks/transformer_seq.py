"""A small transformer encoder on generated sequence tasks: copy, sort and count.

Each task reads ``n`` random tokens and answers per position, so every answer position gives a
training signal:

- ``copy``: the input is the ``n`` tokens followed by ``n`` separators; at the separators the model
  writes the tokens again, in order (attention by position).
- ``sort``: the same layout; at the separators the model writes the tokens sorted (attention by
  content and rank).
- ``count``: the input is the ``n`` tokens; at each position the model says how many times that
  position's token occurs in the sequence (attention by content, then a count).

Positions that carry no answer (the tokens of copy and sort) are ignored by the loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ganno_lightning.envs.tasks.base import ZooFamily, ZooModule, check_batch_size
from ganno_lightning.envs.tasks.data import TrainValData
from ganno_lightning.envs.tasks.ranges import (
    OPTIMIZERS,
    Choices,
    IntRange,
    Rule,
    TaskRanges,
)

#: Content tokens are ``0 .. VOCAB - 1``; token ``VOCAB`` is the separator that marks answer positions.
VOCAB = 10
SEPARATOR = VOCAB
#: The generated tasks, in the order a ``tasks`` range lists them by default.
SEQUENCE_TASKS: tuple[str, ...] = ("copy", "sort", "count")
NUM_TRAIN = 2048
NUM_VAL = 512
#: Seeds the token sequences, which are part of each dataset's definition and shared by all tasks.
TRANSFORMER_DATA_SEED = 0
#: Target of positions without an answer; ``cross_entropy`` skips them.
IGNORE_INDEX = -100
#: At most this many attention heads (fewer when ``width`` is not divisible by it).
MAX_HEADS = 4


@dataclass(frozen=True)
class TransformerSeqRanges(TaskRanges):
    """:class:`TaskRanges` plus the number of tokens to read and the tasks to draw from.

    Attributes:
        seq_len: ``[low, high]`` tokens ``n`` the model reads, sampled uniformly (copy and sort
            inputs are ``2 n`` long, with the answer half).
        tasks: Choices from ``[copy, sort, count]``; one is sampled per task.

    Example::

        >>> TransformerSeqRanges(tasks=["sort"]).validate("family.train").tasks
        ('sort',)
    """

    RULES: ClassVar[dict[str, Rule]] = {
        **TaskRanges.RULES,
        "seq_len": IntRange(minimum=2),
        "tasks": Choices(SEQUENCE_TASKS, key="task"),
    }

    seq_len: Sequence[int] = (4, 8)
    tasks: Sequence[str] = SEQUENCE_TASKS


def num_classes(task: str, seq_len: int) -> int:
    """Output classes of ``task``: the tokens for copy and sort, the counts ``1 .. seq_len`` for count.

    Example::

        >>> num_classes("sort", 6), num_classes("count", 6)
        (10, 6)
    """
    return seq_len if task == "count" else VOCAB


@functools.lru_cache(maxsize=32)
def sequence_task_data(task: str, seq_len: int) -> TrainValData:
    """Random token sequences of ``task`` with their per-position answers, fixed by :data:`TRANSFORMER_DATA_SEED`.

    Inputs are int64 tokens: ``(n, 2 seq_len)`` for copy and sort (tokens then separators),
    ``(n, seq_len)`` for count. Targets have the inputs' shape; positions without an answer hold
    :data:`IGNORE_INDEX`. Count targets are ``count - 1`` (class 0 is "occurs once").

    Raises:
        ValueError: For an unknown ``task``.

    Example::

        >>> d = sequence_task_data("sort", 4)
        >>> x, y = d.x_train[0], d.y_train[0]
        >>> y[4:].tolist() == sorted(x[:4].tolist()), y[:4].tolist(), x[4:].tolist()
        (True, [-100, -100, -100, -100], [10, 10, 10, 10])
        >>> d = sequence_task_data("count", 5)
        >>> x, y = d.x_train[0], d.y_train[0]
        >>> y.tolist() == [x.tolist().count(t) - 1 for t in x.tolist()]
        True
    """
    if task not in SEQUENCE_TASKS:
        raise ValueError(f"`task` must be one of {list(SEQUENCE_TASKS)}, got {task!r}.")
    g = torch.Generator().manual_seed(TRANSFORMER_DATA_SEED)
    tokens = torch.randint(0, VOCAB, (NUM_TRAIN + NUM_VAL, seq_len), generator=g)
    if task == "count":
        x = tokens
        y = (tokens.unsqueeze(2) == tokens.unsqueeze(1)).sum(dim=2) - 1
    else:
        answer = tokens if task == "copy" else tokens.sort(dim=1).values
        x = torch.cat([tokens, torch.full_like(tokens, SEPARATOR)], dim=1)
        y = torch.cat([torch.full_like(tokens, IGNORE_INDEX), answer], dim=1)
    return TrainValData(x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:])


class SequenceTransformer(ZooModule):
    """Token and learned position embeddings, ``depth`` pre-norm transformer encoder layers of
    ``width`` units, a final LayerNorm and a linear head per position; cross-entropy loss.

    Each encoder layer is its own ``nn.TransformerEncoderLayer`` (not an ``nn.TransformerEncoder``,
    which deep-copies one layer and so starts every layer from the same weights). Heads: the
    largest of 4, 2, 1 that divides ``width``; feed-forward width ``2 * width``; GELU; no dropout
    (the tasks are exact, and the validation loss should measure the learning, not the noise).

    Args:
        depth: Encoder layers (agents: ``6 * depth + 4``: the two embeddings, per layer the attention's
            input projection, its output projection, two feed-forward linears and two LayerNorms,
            then the final LayerNorm and the head).
        width: Embedding and model size (``d_model``).
        task: ``"copy"``, ``"sort"`` or ``"count"``.
        seq_len: Tokens the model reads.
        lr: Initial learning rate.
        batch_size: Training batch size.
        optimizer: A name from :data:`~ganno_lightning.envs.tasks.ranges.OPTIMIZERS`.
        seed: Seeds the training data order.

    Example::

        >>> model = SequenceTransformer(2, 16, "copy", 5, lr=1e-3, batch_size=32, optimizer="adamw", seed=0)
        >>> model(torch.zeros(4, 10, dtype=torch.long)).shape
        torch.Size([4, 10, 10])
    """

    def __init__(
        self,
        depth: int,
        width: int,
        task: str,
        seq_len: int,
        lr: float,
        batch_size: int,
        optimizer: str,
        seed: int,
    ) -> None:
        super().__init__(lr, batch_size, optimizer, seed, functools.partial(sequence_task_data, task, seq_len))
        self.save_hyperparameters()
        input_len = seq_len if task == "count" else 2 * seq_len
        self.token_embedding = nn.Embedding(VOCAB + 1, width)
        self.position_embedding = nn.Embedding(input_len, width)
        heads = math.gcd(width, MAX_HEADS)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, dim_feedforward=2 * width, dropout=0.0, activation="gelu", batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes(task, seq_len))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.token_embedding(tokens) + self.position_embedding(positions)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h))

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)


class TransformerSeqFamily(ZooFamily):
    """Transformer encoders on copy, sort and count. Held-out tasks are deeper, wider and longer.

    Defaults: train depth [1, 2], width [16, 32], seq_len [4, 8]; held-out depth [3, 4], width
    [48, 64], seq_len [8, 12]; the task drawn from copy, sort and count, the optimizer from Adam,
    SGD with momentum, AdamW and plain SGD, in both. Agents per task: ``6 * depth + 4``.

    Args:
        train: Meta-training ranges (``TransformerSeqRanges``, mapping or omegaconf section over the
            default).
        heldout: Held-out ranges, same forms.
        prefix: Dotted config path for error messages.

    Raises:
        ValueError: For an unknown key, an invalid range, an unknown task or a batch size above the
            2048 training sequences, naming the field.

    Example::

        >>> family = TransformerSeqFamily(train={"tasks": ["count"]})
        >>> task = family.sample(torch.Generator().manual_seed(0))
        >>> task.info["task"], family.max_layers("train"), family.max_layers("heldout")
        ('count', 16, 28)
    """

    lr_cell_fields = ("task",)

    name = "transformer_seq"
    ranges_type = TransformerSeqRanges
    default_train = TransformerSeqRanges(
        depth=(1, 2), width=(16, 32), lr=(3e-4, 3e-2), batch_size=(32, 128), optimizers=OPTIMIZERS, seq_len=(4, 8)
    )
    default_heldout = TransformerSeqRanges(
        depth=(3, 4), width=(48, 64), lr=(1e-4, 1e-1), batch_size=(16, 256), optimizers=OPTIMIZERS,
        seq_len=(8, 12),
    )

    def check_ranges(self, ranges: TaskRanges, prefix: str) -> None:
        check_batch_size(ranges, prefix, NUM_TRAIN)

    def build(self, hp: dict[str, Any], seed: int) -> SequenceTransformer:
        return SequenceTransformer(
            hp["depth"], hp["width"], hp["task"], hp["seq_len"], hp["lr"], hp["batch_size"], hp["optimizer"], seed
        )
