"""Config loading for every YAML-driven tool: one loader, one wording of every error, one command line.

Each tool declares its keys once, as an omegaconf structured dataclass (defaults commented), and
calls :func:`load_config` with it; the tool's own ``validate`` function then checks what types cannot
(ranges, required fields, known names). Its ``main`` parses the command line with
:class:`ConfigCommandLine`, so every tool is started and fails the same way::

    $ ganno-pbt configs/pbt_smoke.yaml populaton_size=3
    ganno-pbt: error: Unknown config key `populaton_size` in the overrides (did you mean `population_size`?). Known keys: ...; see configs/pbt_digits.yaml.

Every error is a ``ValueError`` with one wording per kind: an unknown key (its full path, the
closest known key, all known keys and the file that documents them), a command-line item that is
not ``key=value``, a list index out of range (the list and its length), and a value of the wrong
type (the key, the value and the type expected).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

__all__ = ["ConfigCommandLine", "WandbConfig", "check_wandb", "load_config", "read_mapping", "unknown_key_error"]

OVERRIDES = "the overrides"  # how errors name the key=value items, wherever they came from
_ABSENT = object()
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbConfig:
    """The ``wandb:`` section of every tool that logs to Weights & Biases.

    A tool with other defaults sets them in its schema, e.g.
    ``wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="ganno-pbt"))``.
    """

    enabled: bool = False  # log to W&B
    project: str = "ganno-lightning"
    mode: str = "offline"  # "online", "offline" or "disabled"
    name: Optional[str] = None  # the run's name; null: W&B picks one (PBT: the summary run, default "population")


SettingsT = TypeVar("SettingsT")


def optional_settings(value: Any, cls: type[SettingsT], name: str, article: str = "a") -> SettingsT | None:
    """``value`` as a ``cls`` (a dataclass of settings that can be off): ``True`` its defaults, a mapping its
    fields, an instance itself, ``None``/``False`` off (``None``); anything else a ``ValueError`` naming ``name``.

    Example::

        >>> @dataclass(frozen=True)
        ... class Search:
        ...     steps: int = 50
        >>> optional_settings(True, Search, "lr_search"), optional_settings({"steps": 5}, Search, "lr_search")
        (Search(steps=50), Search(steps=5))
        >>> optional_settings({"step": 5}, Search, "lr_search")
        Traceback (most recent call last):
        ...
        ValueError: `lr_search` has unknown keys ['step']; it takes steps.
    """
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    names = [f.name for f in dataclasses.fields(cls)]
    if isinstance(value, Mapping):
        unknown = set(value) - set(names)
        if unknown:
            raise ValueError(f"`{name}` has unknown keys {sorted(unknown)}; it takes {', '.join(names)}.")
        try:
            return cls(**value)
        except ValueError as err:
            raise ValueError(f"`{name}`: {err}") from None
    raise ValueError(f"`{name}` must be True, False/None, {article} {cls.__name__} or a mapping of its fields "
                     f"({', '.join(names)}), got {value!r}.")


def check_wandb(section: Any, key: str = "wandb") -> None:
    """Check a loaded :class:`WandbConfig` section: what its types cannot say.

    Raises:
        ValueError: ``mode`` is not one of ``online``, ``offline``, ``disabled``.

    Example::

        >>> check_wandb(OmegaConf.structured(WandbConfig(mode="of")))
        Traceback (most recent call last):
        ...
        ValueError: `wandb.mode` must be 'online', 'offline' or 'disabled', got 'of'.
    """
    if section.mode not in WANDB_MODES:
        raise ValueError(f"`{key}.mode` must be 'online', 'offline' or 'disabled', got {section.mode!r}.")


def unknown_key_error(path: str, known: Iterable[str], *, source: str | None = None,
                      see: str | None = None) -> ValueError:
    """A ``ValueError`` naming the unknown key's full path, the closest known key and all of them.

    Args:
        path: Dotted path of the unknown key (``algo.lrr``, ``suite[1].famly``).
        known: The keys allowed where it stands.
        source: Where it was read, e.g. a file name or "the overrides".
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


def load_config(schema: Any, source: Any = None, overrides: Iterable[str] = (), *, see: str | None = None,
                shorthands: Mapping[str, str] | None = None) -> DictConfig:
    """Merge a YAML file (or dict), then ``key=value`` overrides, onto a structured schema.

    Overrides are set in place, so ``algo.hidden_sizes[0]=32`` sets one entry of a list and
    ``suite[0].tasks=2`` one field of a list entry; a whole section (``algo={lr: 0.1}``) merges.

    Args:
        schema: An omegaconf structured dataclass (or an instance of one, for other defaults).
        source: Path of a YAML file, a dict, a ``DictConfig``, a dataclass instance, or ``None``
            (the schema's defaults).
        overrides: ``key=value`` strings (omegaconf dotlist), applied after the file.
        see: The file that documents the keys, named by unknown-key errors.
        shorthands: Sections that a plain value may stand for one of their keys, e.g.
            ``{"agent": "path"}``: ``agent: x.pt`` (file) and ``agent=x.pt`` (override) set ``agent.path``.

    Returns:
        The merged config, typed by the schema.

    Raises:
        ValueError: an unknown key, an override that is not ``key=value``, a list index out of
            range, a value of the wrong type, or a missing or unreadable file.

    Example::

        >>> @dataclass
        ... class Run:
        ...     seed: int = 0
        ...     sizes: list = dataclasses.field(default_factory=lambda: [64, 64])
        >>> load_config(Run, {"seed": 3}, ["sizes[1]=32"])
        {'seed': 3, 'sizes': [64, 32]}
        >>> load_config(Run, {"sede": 3})
        Traceback (most recent call last):
        ...
        ValueError: Unknown config key `sede` in the config (did you mean `seed`?). Known keys: seed, sizes.
        >>> load_config(Run, None, ["seed=three"])
        Traceback (most recent call last):
        ...
        ValueError: `seed` in the overrides must be an int, got 'three'.
    """
    kind = schema if isinstance(schema, type) else type(schema)
    if not dataclasses.is_dataclass(kind):
        raise TypeError(f"`schema` must be a structured-config dataclass, got {schema!r}.")
    shorthands = dict(shorthands or {})
    data, where = _read(source)
    for section, key in shorthands.items():
        if isinstance(data.get(section), str):
            data[section] = {key: data[section]}
    _check_keys(data, kind, where, see)
    config = OmegaConf.structured(schema)
    try:
        config = OmegaConf.merge(config, data)
    except OmegaConfBaseException as err:
        raise _error(err, kind, where, see) from None
    for item in _check_overrides(overrides, config):
        key, _, value = item.partition("=")
        if key.strip() in shorthands:
            item = f"{key.strip()}.{shorthands[key.strip()]}={value}"
        config = _apply_override(config, item, kind, see)
    return config


def read_mapping(source: Any) -> dict:
    """A YAML file (or mapping) as a plain dict, unchecked: for a tool that reads some sections of another tool's
    config (a task pool reads a meta-training recipe's ``env`` and ``family``).

    Raises:
        ValueError: a missing or unreadable file, or one that is not a mapping.
    """
    return _read(source)[0]


def _read(source: Any) -> tuple[dict, str]:
    """``source`` as a plain dict, and how errors name it."""
    if source is None:
        return {}, "the config"
    if isinstance(source, (str, os.PathLike)):
        path = str(source)
        if not Path(path).is_file():
            where = "" if Path(path).is_absolute() else f" (relative to {os.getcwd()})"
            raise ValueError(f"Config file not found: '{path}'{where}.")
        try:
            loaded = OmegaConf.load(path)
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
        data = OmegaConf.to_container(loaded) if loaded is not None else {}
        where = path
    elif dataclasses.is_dataclass(source):
        data, where = OmegaConf.to_container(OmegaConf.structured(source)), "the config"
    elif isinstance(source, DictConfig):
        data, where = OmegaConf.to_container(source), "the config"
    elif isinstance(source, Mapping):
        data, where = OmegaConf.to_container(OmegaConf.create(dict(source))), "the config"  # a copy
    else:
        raise ValueError(f"A config must be a YAML file's path or a mapping of keys, got {source!r}.")
    if data is None:  # an empty file
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"The config in {where} must be a mapping of keys, got {data!r}.")
    return data, where


def _check_keys(data: Any, kind: Any, where: str, see: str | None, path: str = "") -> None:
    """Reject a key the schema does not have, naming its full path (``suite[0].famly``).

    omegaconf's own error loses the path inside lists of structured entries; this walk keeps it.
    """
    kind = _unwrap_optional(kind)
    if dataclasses.is_dataclass(kind):
        fields = _field_types(kind)
        if data is None or data == "???":
            return  # null or missing: the merge or the tool's validation reports it
        if not isinstance(data, dict):
            raise ValueError(f"`{path}` in {where} must be a section of keys ({', '.join(fields)}), got {data!r}.")
        for key, value in data.items():
            child = f"{path}.{key}" if path else str(key)
            if key not in fields:
                raise unknown_key_error(child, fields, source=where, see=see)
            _check_keys(value, fields[key], where, see, child)
    elif typing.get_origin(kind) in (list, tuple) and isinstance(data, list):
        entry = _unwrap_optional(typing.get_args(kind)[0]) if typing.get_args(kind) else Any
        for i, item in enumerate(data):
            _check_keys(item, entry, where, see, f"{path}[{i}]")
            if dataclasses.is_dataclass(entry) and isinstance(item, dict):
                try:  # here, as omegaconf's error for an entry of a list names the key without its path
                    OmegaConf.merge(OmegaConf.structured(entry), item)
                except ValidationError as err:
                    raise _error(err, entry, where, see, prefix=f"{path}[{i}].") from None
    elif typing.get_origin(kind) is dict and isinstance(data, dict):
        for key, value in data.items():
            _check_keys(value, typing.get_args(kind)[1] if typing.get_args(kind) else Any, where, see, f"{path}.{key}")


def _check_overrides(overrides: Iterable[Any], config: DictConfig) -> list[str]:
    """``overrides`` as a list, each checked to be a ``key=value`` string with a key.

    omegaconf reads ``lr`` (no ``=``) as ``lr: null`` and ``=3`` as a key named ``''``, so a typo
    such as ``algo.lr 1e-3`` would otherwise pass silently or fail far from its cause.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    items = list(overrides)
    for item in items:
        if not isinstance(item, str) or "=" not in item or not item.partition("=")[0].strip():
            raise ValueError(f"Override {item!r} must be key=value with a key before the '=', "
                             f"e.g. {_example(config, item)}.")
    return items


def _example(config: DictConfig, item: Any) -> str:
    """A valid override to show: ``item``'s own key with its current value, else the schema's first key."""
    key = item.partition("=")[0].strip() if isinstance(item, str) else ""
    if key and _exists(config, key):
        value = OmegaConf.select(config, key, throw_on_missing=False)
        if not isinstance(value, (DictConfig, ListConfig)):
            return f"{key}={_as_yaml(value)}"
        if isinstance(value, ListConfig) and not any(isinstance(v, (DictConfig, ListConfig)) for v in value):
            return f"{key}=[{', '.join(_as_yaml(v) for v in value)}]"
    return _first_key(OmegaConf.to_container(config)) or "key=value"


def _first_key(data: dict, prefix: str = "") -> str | None:
    for key, value in data.items():
        if isinstance(value, dict):
            found = _first_key(value, f"{prefix}{key}.")
            if found:
                return found
        elif not isinstance(value, list):
            return f"{prefix}{key}={_as_yaml(value)}"
    return None


def _as_yaml(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _apply_override(config: DictConfig, item: str, kind: type, see: str | None) -> DictConfig:
    """``config`` with one override applied: in place where its parent exists, else merged."""
    key, _, value = (part.strip() for part in item.partition("="))
    _check_indices(config, item, key)
    try:
        # a section's worth (`space.dropout={low: 0, high: 0.5}`) merges, so it is typed as its container's entries
        section = value.startswith("{") and "[" not in key
        if not section and ("[" in key or "." not in key or _exists(config, key.rsplit(".", 1)[0])):
            # In place, so `sizes[0]=32` sets one entry instead of failing to merge a dict into a list.
            config.merge_with_dotlist([item])
        else:  # a new entry of a dict (`hyperparameters.wd.low=0`), which in place cannot create
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException as err:
        raise _error(err, kind, OVERRIDES, see) from None
    except (TypeError, ValueError) as err:  # omegaconf's own parsing of the key (`sizes.x` of a list)
        raise ValueError(f"Override {item!r} cannot be applied: {err}.") from None
    except yaml.YAMLError as err:  # the value is parsed as YAML: `[a*]` is fine, `[*a]` an alias
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"Override {item!r}: its value is not valid YAML ({problem}); quote strings that start "
                         f"with *, & or ! (e.g. {key}='[\"*@3000steps\"]').") from None
    return config


def _check_indices(config: DictConfig, item: str, key: str) -> None:
    """Reject an index past the end of its list, or into something that is not a list.

    omegaconf itself reports the first only for lists of plain values, and turns an index into a
    free-form section (``env.scale_bounds[0]=0.1`` where ``env`` is a dict) into a key ``'0'``.
    """
    node: Any = config
    path = ""
    try:
        for name, index in re.findall(r"([^.\[\]]+)|\[(-?\d+)\]", key):
            if index and not isinstance(node, ListConfig):
                what = "is not set" if node is _ABSENT else "is not a list"
                raise ValueError(f"Override {item!r}: `{path}` {what}, so it has no index {index}. Set the "
                                 f"whole value instead, e.g. {path}=[...].")
            if isinstance(node, ListConfig) and re.fullmatch(r"-?\d+", index or name):
                position = int(index or name)
                if not -len(node) <= position < len(node):
                    raise _index_error(config, item, path, position)
                node, path = node[position], f"{path}[{position}]"
            elif isinstance(node, DictConfig) or node is _ABSENT:
                node = node[name] if node is not _ABSENT and name in node else _ABSENT
                path = f"{path}.{name}" if path else name
            else:
                return  # a value with no keys: the set itself reports it
    except OmegaConfBaseException:
        return


def _exists(config: DictConfig, path: str) -> bool:
    try:
        return OmegaConf.select(config, path, default=_ABSENT, throw_on_missing=False) is not _ABSENT
    except OmegaConfBaseException:
        return True  # let the in-place set report it, with its key


def _index_error(config: DictConfig, item: str, whole: str, index: int) -> ValueError:
    entries = OmegaConf.select(config, whole)
    size = f"has {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    return ValueError(f"Override {item!r}: `{whole}` {size}, so it has no index {index}. Set the whole "
                      f"list instead, e.g. {whole}=[...].")


_EXPECTED = {"IntegerNode": "an int", "FloatNode": "a float", "BooleanNode": "a bool (true or false)",
             "StringNode": "a string", "ListConfig": "a list", "DictConfig": "a section of keys"}


def _error(err: OmegaConfBaseException, kind: type, where: str, see: str | None, prefix: str = "") -> ValueError:
    """omegaconf's error, in our wording (``prefix``: the path of the section it was raised in)."""
    key = prefix + str(getattr(err, "full_key", None) or getattr(err, "key", None) or "")
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        return unknown_key_error(key, _known_keys(kind, key), source=where, see=see)
    message = str(getattr(err, "msg", None) or err).splitlines()[0]
    expected = _EXPECTED.get(type(getattr(err, "child_node", None)).__name__)
    if isinstance(err, ValidationError) and expected:
        return ValueError(f"`{key}` in {where} must be {expected}, got {getattr(err, 'value', None)!r}.")
    return ValueError(f"`{key}` in {where}: {message}" if key else f"{where}: {message}")


def _known_keys(kind: Any, path: str) -> list[str]:
    """The keys the schema allows beside ``path``: those of the section holding it, or none."""
    parts = [p for p in re.split(r"[.\[\]]", path) if p][:-1]
    for part in parts:
        kind = _unwrap_optional(kind)
        if dataclasses.is_dataclass(kind):
            kind = _field_types(kind).get(part)
        elif typing.get_origin(kind) in (list, tuple, dict) and typing.get_args(kind):
            kind = typing.get_args(kind)[-1]  # any entry of a list or dict: its element type
        else:
            return []
    kind = _unwrap_optional(kind)
    return list(_field_types(kind)) if dataclasses.is_dataclass(kind) else []


def _field_types(kind: type) -> dict[str, Any]:
    hints = typing.get_type_hints(kind)  # resolves `from __future__ import annotations` strings
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(kind)}


def _unwrap_optional(kind: Any) -> Any:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return kind


T = TypeVar("T")


class ConfigCommandLine(argparse.ArgumentParser):
    """The command line of every config-driven tool: ``PROG CONFIG.yaml [key=value ...]``.

    A bad config, override or argument prints one line, ``PROG: error: MESSAGE``, to stderr and
    exits with status 2, without a traceback; ``--help`` prints the tool's docstring and its config
    keys with their defaults.

    Args:
        prog: How the tool is started, e.g. ``ganno-pbt``.
        doc: The help text (the tool's module docstring).
        schema: The tool's structured config; ``--help`` lists its keys and defaults.
        see: The file that documents the keys, named in ``--help``.

    Example::

        cli = ConfigCommandLine("ganno-pbt", __doc__, PopulationConfig)
        args = cli.parse_args(argv)
        config = cli.load(load_config, args)  # load_config(args.config, args.overrides), errors as one line
    """

    def __init__(self, prog: str, doc: str | None, schema: Any, see: str | None = None) -> None:
        keys = OmegaConf.to_yaml(OmegaConf.structured(schema)).rstrip()
        super().__init__(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=f"Config keys and defaults{f' (documented in {see})' if see else ''}:\n{keys}")
        self.add_argument("config", help="the YAML config file")
        self.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                          help="settings over the file's, e.g. seed=1 or a.sizes[0]=32")

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` on one line and exit with status 2 (argparse's usage-error status)."""
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)

    def load(self, load: Callable[[str, Sequence[str]], T], args: argparse.Namespace) -> T:
        """``load(args.config, args.overrides)``; a ``ValueError`` or ``OSError`` becomes a one-line error.

        Pass the tool's loader and validation here (everything that can fail on a bad config),
        and run the tool outside, so a failure in the run itself keeps its traceback.
        """
        try:
            return load(args.config, list(args.overrides))
        except (ValueError, OSError) as err:
            self.error(str(err))
