"""The pre-flight fit: build the user's task and fit a batch or two in this process before any trial.

A task that cannot be built, Trainer arguments Lightning refuses, a fit that raises or a monitored metric
that is never logged would fail every trial the same way, in worker processes and after a wait.
Every tuner checks them first, here, and reports one ValueError that names the config key at fault:
BOIL's ``dry_run``, PBT's ``preflight`` and NOS's ``check_task``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ganno_lightning.trials.trainer import quiet_run

__all__ = ["preflight_fit"]

_COUNTS = {1: "one", 2: "two", 3: "three"}


def _quote(err: BaseException, limit: int = 300) -> str:
    """``"TypeError: <first line of its message>"``, without a closing full stop: a CLI reports it on one line."""
    line = (str(err).splitlines() or [""])[0].rstrip(" .")
    return f"{type(err).__name__}: {line if len(line) <= limit else line[:limit] + ' [...]'}"


def preflight_fit(
    build: Callable[[], tuple[Any, Any]],
    monitor: str,
    *,
    task: str,
    skip: str,
    monitor_key: str = "monitor",
    trainer_kwargs: Mapping[str, Any] | None = None,
    trainer_key: str | None = None,
    callbacks: Sequence[Any] = (),
    batches: int = 1,
    threads: int = 1,
    runs: str = "trial",
) -> dict[str, float]:
    """Build the task, fit it for ``batches`` training and validation batches with a throwaway Trainer,
    and check that ``monitor`` is logged.

    The Trainer takes ``trainer_kwargs`` (their ``callbacks`` before the caller's), except that it
    trains one epoch of ``batches`` batches on one device in this process, validates ``batches`` batches
    at its end, has no sanity check, logs (only if they set a logger) to a CSV file, and writes under a
    temporary directory that is removed afterwards.

    Args:
        build: Returns ``(LightningModule, data)``, ``data`` a LightningDataModule, a training
            DataLoader, or None (the module brings its own); it seeds what it needs.
        monitor: The metric the trials are scored on.
        task: The task as messages name it, e.g. ``"`task` 'pkg.mod:factory'"``.
        skip: The config key that turns this check off, e.g. ``"check_task"``.
        monitor_key: ``monitor``'s config key, e.g. ``"train.monitor"``.
        trainer_kwargs: The user's ``Trainer`` arguments.
        trainer_key: Their config key, e.g. ``"trainer_kwargs"``; ``None`` when the user sets none, and
            then a Trainer that cannot be made is reported as the fit's error.
        callbacks: The caller's own checks, e.g. one that applies every hyperparameter's setter.
        batches: Training and validation batches of the fit.
        threads: Torch threads during the check (restored after).
        runs: What the tuner trains, for the messages ("Every trial would fail the same way").

    Returns:
        What the fit logged, ``trainer.callback_metrics`` as plain floats.

    Raises:
        ValueError: the task cannot be built, the Trainer refuses ``trainer_kwargs``, or the fit
            raises (each with the error's first line quoted), or ``monitor`` is never logged (naming
            what is, and how to fix it).

    Example::

        from ganno_lightning.examples.digits import DigitsClassifier, DigitsDataModule
        from ganno_lightning.trials.preflight import preflight_fit

        preflight_fit(lambda: (DigitsClassifier(), DigitsDataModule()), "val_los",
                      task="`task` 'digits'", skip="check_task")
        # ValueError: `monitor` is 'val_los', but the task never logs it in a one-batch fit; it logs
        # `train_loss`, `train_loss_epoch`, `train_loss_step`, `val_acc`, `val_loss`. Log it with
        # self.log('val_los', value) in validation_step, or set `monitor` to one of those.
    """
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    fit_name = f"{_COUNTS.get(batches, batches)}-batch fit"
    retry = (f" Every {runs} would fail the same way: fix the task{f' (or `{trainer_key}`)' if trainer_key else ''},"
             f" or set `{skip}` to false to skip this check.")
    user = dict(trainer_kwargs or {})

    def fit_failed(err: BaseException) -> ValueError:
        return ValueError(f"A {fit_name} of {task} raised {_quote(err)}.{retry}")

    with quiet_run(threads=threads), tempfile.TemporaryDirectory(prefix="preflight_") as root:
        try:
            module, data = build()
        except Exception as err:
            raise ValueError(f"{task} could not be built: {_quote(err)}.{retry}") from err
        kwargs = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False, **user}
        theirs = kwargs.get("callbacks") or []
        kwargs.update(
            callbacks=[*(theirs if isinstance(theirs, (list, tuple)) else [theirs]), *callbacks],
            # a logger of theirs stays a logger (LearningRateMonitor needs one), written under `root`
            default_root_dir=root, logger=CSVLogger(root) if kwargs.get("logger") else False,
            # one process on one device: a distributed strategy would start the caller's script again
            devices=1, num_nodes=1, strategy="auto",
            max_epochs=1, max_steps=-1, limit_train_batches=batches, limit_val_batches=batches,
            val_check_interval=1.0, check_val_every_n_epoch=1, num_sanity_val_steps=0,
        )
        try:
            trainer = Trainer(**kwargs)
        except Exception as err:
            if trainer_key is not None:
                raise ValueError(f"`{trainer_key}`={user} are not valid Trainer arguments: {_quote(err)}.") from err
            raise fit_failed(err) from err
        try:
            trainer.fit(module, data)  # Lightning takes a datamodule here too
        except Exception as err:
            raise fit_failed(err) from err
    logged = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if monitor not in logged:
        names = ", ".join(f"`{name}`" for name in sorted(logged)) or "nothing"
        raise ValueError(
            f"`{monitor_key}` is {monitor!r}, but the task never logs it in a {fit_name}; it logs {names}."
            f" Log it with self.log({monitor!r}, value) in validation_step, or set `{monitor_key}` to one of those."
        )
    return logged
