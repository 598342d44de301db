"""The random-number streams one training run draws from: the CPU generator and its CUDA device's."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch

#: The CPU RNG state, then one state per CUDA device the run trains on.
RNGStates = tuple[torch.Tensor, ...]


def cuda_devices(device: torch.device | str) -> list[int]:
    """The CUDA device indices a run on ``device`` draws from (none on the CPU).

    Example::

        >>> cuda_devices("cpu"), cuda_devices("cuda:1")
        ([], [1])
    """
    parsed = torch.device(device)
    return [parsed.index or 0] if parsed.type == "cuda" else []


def get_rng(device: torch.device | str) -> RNGStates:
    """The current states of the generators a run on ``device`` draws from."""
    return (torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in cuda_devices(device)))


def set_rng(device: torch.device | str, states: RNGStates) -> None:
    """Put back states from :func:`get_rng` (the same ``device``).

    Example::

        >>> saved = get_rng("cpu")
        >>> a = torch.rand(1); set_rng("cpu", saved)
        >>> bool(torch.rand(1) == a)
        True
    """
    torch.set_rng_state(states[0])
    for index, state in zip(cuda_devices(device), states[1:]):
        torch.cuda.set_rng_state(state, index)


@contextlib.contextmanager
def replayable(device: torch.device | str) -> Iterator[Callable[[], None]]:
    """Fork the generators a run on ``device`` draws from, and Python's and NumPy's (data augmentation's);
    yields a function that puts them all back to where they were at the fork (so several trials draw the
    same numbers), and restores them on exit.

    Example::

        >>> with replayable("cpu") as replay:
        ...     a = torch.rand(1); replay(); b = torch.rand(1)
        >>> bool(a == b)
        True
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda_devices(device)):
        states = get_rng(device)

        def replay() -> None:
            set_rng(device, states)
            random.setstate(python_state)
            np.random.set_state(numpy_state)

        try:
            yield replay
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
