"""Ready-made example tasks on bundled data (no download): the demo, PBT, NOS, the zoo, the tests and the
tuner benchmarks (``tuning_tasks``: train / validation / test splits and a search space each) reuse them.

Example::

    from ganno_lightning.examples import DigitsClassifier, DigitsDataModule
"""

from ganno_lightning._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".digits": ["DigitsClassifier", "DigitsDataModule", "DigitsSplit", "digits_network", "digits_task",
                "load_digits_split"],
    ".tuning_tasks": ["MLPRegressor", "TUNING_TASKS", "TuningTask", "load_diabetes_split"],
})
