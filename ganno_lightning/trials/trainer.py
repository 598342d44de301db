"""A quiet Lightning Trainer for short scored runs (agent evaluation, rule-search candidates).

The Trainer writes nothing of its own; a :class:`~ganno_lightning.trials.curve.LearningCurve` among
its callbacks records what the run is scored on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

#: The Trainer arguments that set how long a fit trains: tuners that choose a trial's length (BOIL, PBT's
#: population length) refuse them among the user's Trainer arguments.
LENGTH_ARGUMENTS = ("max_epochs", "max_steps", "max_time", "min_epochs", "min_steps")


def short_run_trainer(
    max_steps: int,
    val_every: int,
    root: str,
    callbacks: Sequence[Any],
    accelerator: str = "cpu",
    **overrides: Any,
) -> Any:
    """A one-device Trainer that validates every ``val_every`` steps and writes nothing of its own.

    No logger, checkpoints, progress bar, model summary or sanity check: the callbacks collect what
    the run is scored on. Validation runs every ``val_every`` optimizer steps across epoch boundaries.

    Args:
        max_steps: Optimizer steps of the run.
        val_every: Steps between validations.
        root: ``default_root_dir`` (a temporary directory).
        callbacks: The run's callbacks.
        accelerator: Lightning accelerator name.
        **overrides: Any other ``Trainer`` keyword argument.

    Example::

        from ganno_lightning.trials.curve import LearningCurve
        from ganno_lightning.trials.trainer import short_run_trainer

        curve = LearningCurve("val_loss")
        with tempfile.TemporaryDirectory() as root:
            short_run_trainer(100, val_every=25, root=root, callbacks=[curve]).fit(model)
        curve.curve  # [(25, 0.81), (50, 0.52), (75, 0.44), (100, 0.41)]
    """
    from lightning.pytorch import Trainer

    return Trainer(
        max_steps=max_steps,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,  # validate every `val_every` steps across epoch boundaries
        num_sanity_val_steps=0,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        **overrides,
    )


@contextlib.contextmanager
def quiet_run(threads: int = 1) -> Iterator[None]:
    """Run with ``threads`` torch threads and Lightning's start-up lines off; restore both after.

    Tiny models train fastest single-threaded, and "GPU available: False" once per short run is
    noise. Restoring matters when runs happen in the caller's process (``JobPool`` with no worker
    processes): it must not be left single-threaded or with Lightning's info lines silenced.

    Example::

        with quiet_run(threads=1):
            short_run_trainer(300, 25, root, [curve]).fit(module)
    """
    previous_threads = torch.get_num_threads()
    logger = logging.getLogger("lightning.pytorch")
    previous_level = logger.level
    torch.set_num_threads(int(threads))
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        logger.setLevel(previous_level)
