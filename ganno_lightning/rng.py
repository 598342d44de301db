"""The random-number streams one training run draws from: the CPU generator and its CUDA device's."""

from __future__ import annotations

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
