"""Ready-made example tasks on bundled data (no download): the demo, PBT, NOS, the zoo and the tests reuse them.

Example::

    from ganno_lightning.examples import DigitsClassifier, DigitsDataModule
"""

from ganno_lightning._lazy import lazy_exports

_EXPORTS = {
    name: "ganno_lightning.examples.digits"
    for name in ("DigitsClassifier", "DigitsDataModule", "DigitsSplit", "digits_network", "digits_task", "load_digits_split")
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
