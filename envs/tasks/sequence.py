"""A small LSTM on generated sequences: the delayed-copy task.

At every position ``t >= delay`` the model outputs the token it read ``delay`` steps earlier, so
the task needs memory and gets harder with the delay, while every position gives a training signal:
with Adam at 3e-3 a default task's loss falls from ln 10 to about 0.2 within 100 steps, where a
parity or sum-mod-k target would leave a short run at chance.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ganno_lightning.envs.tasks.base import ZooFamily, ZooModule, check_batch_size
from ganno_lightning.envs.tasks.data import TrainValData
from ganno_lightning.envs.tasks.ranges import IntRange, Rule, TaskRanges

VOCAB = 10
NUM_TRAIN = 2048
NUM_VAL = 512
#: Seeds the token sequences, which are part of the dataset's definition and shared by all tasks.
SEQUENCE_DATA_SEED = 0
#: Target of positions before the first copy; ``cross_entropy`` skips them.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class SequenceRanges(TaskRanges):
    """:class:`TaskRanges` plus the sequence length and the copy delay.

    Attributes:
        seq_len: ``[low, high]`` tokens per sequence, sampled uniformly (the cost of a step grows
            with it).
        delay: ``[low, high]`` how many steps back the target token lies, sampled uniformly (the
            memory the task needs). ``delay`` high must be below ``seq_len`` low.

    Example::

        >>> SequenceRanges(seq_len=[8, 8], delay=[8, 9]).validate("family.train")
        Traceback (most recent call last):
        ...
        ValueError: `family.train.delay` must stay below `family.train.seq_len`: ...
    """

    RULES: ClassVar[dict[str, Rule]] = {
        **TaskRanges.RULES,
        "seq_len": IntRange(minimum=2),
        "delay": IntRange(minimum=1),
    }

    seq_len: Sequence[int] = (8, 12)
    delay: Sequence[int] = (1, 3)

    def _check_consistency(self, prefix: str) -> None:
        if self.delay[1] >= self.seq_len[0]:
            raise ValueError(
                f"`{prefix}.delay` must stay below `{prefix}.seq_len`: the largest delay must be less than the "
                f"shortest sequence, got delay [{self.delay[0]}, {self.delay[1]}] and seq_len "
                f"[{self.seq_len[0]}, {self.seq_len[1]}]. Lower the delay or lengthen the sequences."
            )


@functools.lru_cache(maxsize=32)
def delayed_copy_data(seq_len: int, delay: int) -> TrainValData:
    """Uniform random token sequences and their delayed copies, fixed by :data:`SEQUENCE_DATA_SEED`.

    Inputs are ``(n, seq_len)`` int64 tokens in ``[0, VOCAB)``; targets are the inputs shifted right
    by ``delay``, with the first ``delay`` positions set to :data:`IGNORE_INDEX`.

    Example::

        >>> d = delayed_copy_data(6, 2)
        >>> bool((d.y_train[:, 2:] == d.x_train[:, :-2]).all()), d.y_train[0, :2].tolist()
        (True, [-100, -100])
    """
    g = torch.Generator().manual_seed(SEQUENCE_DATA_SEED)
    x = torch.randint(0, VOCAB, (NUM_TRAIN + NUM_VAL, seq_len), generator=g)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, delay:] = x[:, :-delay]
    return TrainValData(x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:])


class DelayedCopyLSTM(ZooModule):
    """Embedding, ``depth`` single-layer LSTMs of ``width`` units and a linear head per position.

    The LSTMs are separate modules rather than one ``nn.LSTM(num_layers=depth)`` so that each
    recurrent layer is its own agent: a multi-layer ``nn.LSTM`` owns all its layers' parameters
    directly and would be one agent.

    Args:
        depth: LSTM layers (agents: ``depth + 2``, with the embedding and the head).
        width: Embedding and hidden size.
        seq_len: Tokens per sequence.
        delay: Steps between a token and its copy.
        lr: Initial learning rate.
        batch_size: Training batch size.
        optimizer: A name from :data:`~ganno_lightning.envs.tasks.ranges.OPTIMIZERS`.
        seed: Seeds the training data order.

    Example::

        >>> model = DelayedCopyLSTM(2, 16, 12, 3, lr=1e-2, batch_size=32, optimizer="adam", seed=0)
        >>> model(torch.zeros(4, 12, dtype=torch.long)).shape
        torch.Size([4, 12, 10])
    """

    def __init__(
        self,
        depth: int,
        width: int,
        seq_len: int,
        delay: int,
        lr: float,
        batch_size: int,
        optimizer: str,
        seed: int,
    ) -> None:
        super().__init__(lr, batch_size, optimizer, seed, functools.partial(delayed_copy_data, seq_len, delay))
        self.save_hyperparameters()
        self.embedding = nn.Embedding(VOCAB, width)
        self.lstms = nn.ModuleList(nn.LSTM(width, width, batch_first=True) for _ in range(depth))
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embedding(tokens)
        for lstm in self.lstms:
            h, _ = lstm(h)
        return self.head(h)

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)


class SequenceFamily(ZooFamily):
    """LSTMs on the delayed-copy task. Held-out tasks are deeper, wider, longer and need more memory.

    Defaults: train depth [1, 2], width [16, 32], batch [32, 64], seq_len [8, 12], delay [1, 3];
    held-out depth [3, 4], width [32, 64], batch [16, 128], seq_len [12, 20], delay [4, 8];
    vocabulary of 10 tokens. Agents per task: ``depth + 2`` (embedding, LSTMs, head). The train
    ranges are narrower than the other families' because a recurrent step costs several times an
    MLP's on CPU.

    Args:
        train: Meta-training ranges (``SequenceRanges``, mapping or omegaconf section over the default).
        heldout: Held-out ranges, same forms.
        prefix: Dotted config path for error messages.

    Raises:
        ValueError: For an unknown key, an invalid range, a delay not below the sequence length, or
            a batch size above the 2048 training sequences, naming the field.

    Example::

        >>> family = SequenceFamily()
        >>> family.max_layers("train"), family.max_layers("heldout")
        (4, 6)
    """

    name = "sequence"
    ranges_type = SequenceRanges
    default_train = SequenceRanges(
        depth=(1, 2), width=(16, 32), lr=(3e-4, 3e-2), batch_size=(32, 64), seq_len=(8, 12), delay=(1, 3)
    )
    default_heldout = SequenceRanges(
        depth=(3, 4), width=(32, 64), lr=(1e-4, 1e-1), batch_size=(16, 128), seq_len=(12, 20), delay=(4, 8)
    )

    def check_ranges(self, ranges: TaskRanges, prefix: str) -> None:
        check_batch_size(ranges, prefix, NUM_TRAIN)

    def build(self, hp: dict[str, Any], seed: int) -> DelayedCopyLSTM:
        return DelayedCopyLSTM(
            hp["depth"], hp["width"], hp["seq_len"], hp["delay"], hp["lr"], hp["batch_size"], hp["optimizer"], seed
        )
