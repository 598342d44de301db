"""Optimizer step hooks that fire once per real step, also for optimizers that call ``super().step()``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


class OutermostStepHooks:
    """Calls ``pre`` before and ``post`` after each outermost ``optimizer.step()``.

    torch runs step hooks around every hooked ``step``; a subclass whose ``step`` calls
    ``super().step()`` would run them twice per update. A nesting depth keeps one call per update.
    If a step raises (Lightning runs ``training_step`` and ``backward`` inside ``step(closure)``),
    the post hook never runs: :meth:`reset` forgets the unfinished step.

    Args:
        optimizer: The optimizer to hook.
        pre: Called before the update, or ``None``.
        post: Called after the update, or ``None``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, pre: Callable[[], None] | None = None,
                 post: Callable[[], None] | None = None) -> None:
        self._depth = 0
        self._suspended = False
        self._pre, self._post = pre, post
        self._handles = [optimizer.register_step_pre_hook(self._before),
                         optimizer.register_step_post_hook(self._after)]

    def _before(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._suspended:
            return
        self._depth += 1
        if self._depth == 1 and self._pre is not None:
            self._pre()

    def _after(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._suspended:
            return
        self._depth -= 1
        if self._depth == 0 and self._post is not None:
            self._post()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Steps taken inside run neither hook (a probe's trial update that is undone afterwards)."""
        self._suspended = True
        try:
            yield
        finally:
            self._suspended = False

    def reset(self) -> None:
        """Forget a step that raised before its post hook ran."""
        self._depth = 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
