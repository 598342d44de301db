"""The one wording of an unknown-config-key error, shared by every YAML-driven entry point."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigIndexError


def unknown_key_error(path: str, known: Iterable[str], *, source: str | None = None,
                      see: str | None = None) -> ValueError:
    """A ``ValueError`` naming the unknown key's full path, the closest known key and all of them.

    Args:
        path: Dotted path of the unknown key (``algo.lrr``, ``suite[1].famly``).
        known: The keys allowed where it stands.
        source: Where it was read, e.g. a file name or "the command-line overrides".
        see: A file that documents the keys, e.g. ``configs/evaluate.yaml``.

    Example::

        >>> str(unknown_key_error("algo.lrr", ["lr", "gamma"], see="configs/ganno_default.yaml"))
        'Unknown config key `algo.lrr` (did you mean `lr`?). Known keys: lr, gamma; see configs/ganno_default.yaml.'
    """
    known = [str(k) for k in known]
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, known, n=1)
    where = f" in {source}" if source else ""
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    message = f"Unknown config key `{path}`{where}{hint}."
    if known:
        message += f" Known keys: {', '.join(known)}" + (f"; see {see}." if see else ".")
    elif see:
        message += f" See {see}."
    return ValueError(message)


def known_keys_at(schema: Any, path: str) -> list[str]:
    """The keys of ``schema`` (an omegaconf config) beside ``path``: its parent node's keys, or none.

    Example::

        >>> known_keys_at(OmegaConf.create({"run": {"seed": 0, "workers": 2}}), "run.sed")
        ['seed', 'workers']
    """
    parent = path.rpartition(".")[0]
    node = OmegaConf.select(schema, parent) if parent else schema
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def check_overrides(overrides: Iterable[Any], example: str) -> list[str]:
    """``overrides`` as a list, each checked to be a ``key=value`` string with a key.

    omegaconf reads ``lr`` (no ``=``) as ``lr: null`` and ``=3`` as a key named ``''``, so a typo
    such as ``algo.lr 1e-3`` would otherwise pass silently or fail far from its cause.

    Args:
        overrides: Command-line items, e.g. ``["algo.lr=1e-3"]``.
        example: A valid override for this entry point, shown in the error.

    Raises:
        ValueError: naming the first malformed item and showing ``example``.

    Example::

        >>> check_overrides(["run.seed=1"], example="run.seed=1")
        ['run.seed=1']
        >>> check_overrides(["run.seed"], example="run.seed=1")
        Traceback (most recent call last):
        ...
        ValueError: Override 'run.seed' must be key=value with a key before the '=', e.g. run.seed=1.
    """
    items = list(overrides)
    for item in items:
        if not isinstance(item, str) or not item.partition("=")[0].strip() or "=" not in item:
            raise ValueError(f"Override {item!r} must be key=value with a key before the '=', e.g. {example}.")
    return items


def apply_overrides(config: DictConfig, overrides: Iterable[str]) -> None:
    """Set each ``key=value`` of ``overrides`` on ``config``, in place.

    In place rather than merged from a dotlist, so ``algo.hidden_sizes[0]=32`` sets one entry of an
    existing list instead of failing to merge a dict into it. Unknown keys and wrong types raise
    omegaconf's own errors: the caller knows the schema and the source to word them with.

    Raises:
        ValueError: an index outside its list, naming the override and the list's length.

    Example::

        >>> config = OmegaConf.create({"algo": {"hidden_sizes": [64, 64]}})
        >>> apply_overrides(config, ["algo.hidden_sizes[1]=32"])
        >>> config.algo.hidden_sizes
        [64, 32]
        >>> apply_overrides(config, ["algo.hidden_sizes[2]=8"])
        Traceback (most recent call last):
        ...
        ValueError: Override 'algo.hidden_sizes[2]=8': `algo.hidden_sizes` has 2 entries, so it has no index 2. Set the whole list instead, e.g. algo.hidden_sizes=[...].
    """
    for item in overrides:
        try:
            config.merge_with_dotlist([item])
        except ConfigIndexError as err:
            # full_key is the failing index, whatever follows it: `a.b[7].name=x` fails at `a.b[7]`
            match = re.fullmatch(r"(.*)\[(-?\d+)\]", str(err.full_key))
            if match is None:
                raise ValueError(f"Override {item!r}: {str(err).splitlines()[0]}.") from None
            whole, index = match.groups()
            entries = OmegaConf.select(config, whole)
            size = (f"has {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}" if isinstance(entries, ListConfig)
                    else "is not a list here")
            raise ValueError(f"Override {item!r}: `{whole}` {size}, so it has no index {index}. Set the whole "
                             f"list instead, e.g. {whole}=[...].") from None
