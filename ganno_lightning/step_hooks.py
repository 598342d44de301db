"""Optimizer step hooks that fire once per real step, also for optimizers that call ``super().step()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def register_outermost_step_hooks(
    optimizer: torch.optim.Optimizer,
    pre: Callable[[], None] | None = None,
    post: Callable[[], None] | None = None,
) -> list[Any]:
    """Call ``pre`` before and ``post`` after each outermost ``optimizer.step()``.

    torch runs step hooks around every hooked ``step``; a subclass whose ``step`` calls
    ``super().step()`` would run them twice per update. A nesting depth keeps one call per update.

    Returns:
        Handles; ``handle.remove()`` unregisters.
    """
    depth = [0]

    def before(opt: Any, args: Any, kwargs: Any) -> None:
        depth[0] += 1
        if depth[0] == 1 and pre is not None:
            pre()

    def after(opt: Any, args: Any, kwargs: Any) -> None:
        depth[0] -= 1
        if depth[0] == 0 and post is not None:
            post()

    return [optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)]
