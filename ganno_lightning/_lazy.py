"""Lazy package exports (PEP 562), shared by the package and its subpackages."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``, importing each name on first use.

    Args:
        package: The package's ``__name__``.
        exports: Module -> the public names it defines. A module name starting with ``.`` is
            relative to ``package``.

    Example::

        __getattr__, __dir__, __all__ = lazy_exports(__name__, {
            ".curve": ["LearningCurve"],
            "ganno_lightning.trials.pool": ["JobPool", "read_log"],
        })
    """
    module_of = {name: importlib.util.resolve_name(module, package) if module.startswith(".") else module
                 for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return __getattr__, __dir__, sorted(module_of)
