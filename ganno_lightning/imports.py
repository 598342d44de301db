"""Objects named by an import string, ``"package.module:attr"``, as configs and pickles carry them."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def import_object(path: str, *, argument: str = "path") -> Any:
    """The object that ``path`` names: ``"package.module:attr"``, where ``attr`` may be dotted.

    Strings travel where objects cannot: YAML configs, command lines, and pickles sent to worker
    processes that import the module themselves.

    Args:
        path: ``"package.module:attr"`` or ``"package.module:Class.attr"``.
        argument: The caller's name for ``path``, quoted in error messages (e.g. ``"task"``).

    Raises:
        ValueError: If ``path`` is not of that form, its module cannot be imported, or the module
            has no such attribute; the message quotes ``path`` and says which part failed.

    Example::

        >>> import_object("collections:OrderedDict").__name__
        'OrderedDict'
        >>> import_object("collections:OrderedDict.fromkeys").__qualname__
        'OrderedDict.fromkeys'
        >>> import_object("collections.OrderedDict", argument="task")
        Traceback (most recent call last):
        ...
        ValueError: `task` must be an import path 'package.module:attr', got 'collections.OrderedDict'.
    """
    module_name, _, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not module_name or not attr or ":" in attr:
        raise ValueError(f"`{argument}` must be an import path 'package.module:attr', got {path!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        # Only a module that is not there gets the path hint; an import failing inside it is its own.
        missing = err.name is not None and (module_name + ".").startswith(err.name + ".")
        hint = " Is its package installed or on PYTHONPATH?" if missing else ""
        raise ValueError(f"`{argument}` {path!r}: cannot import module {module_name!r} ({err}).{hint}") from err
    obj = module
    for depth, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = ".".join([module_name, *attr.split(".")[:depth]])
            raise ValueError(f"`{argument}` {path!r}: {owner!r} has no attribute {part!r}.") from None
    return obj


def import_callable(target: str | Callable[..., Any], *, argument: str = "path") -> Callable[..., Any]:
    """The class or function that ``target`` is, or names as an import string (see :func:`import_object`).

    Args:
        target: A callable, or ``"package.module:attr"`` naming one.
        argument: The caller's name for ``target``, quoted in error messages.

    Raises:
        ValueError: If the import string fails to import, or names something that is not callable.
        TypeError: If ``target`` is neither a string nor callable.

    Example::

        >>> import_callable("collections:OrderedDict", argument="task.module").__name__
        'OrderedDict'
        >>> import_callable("math:pi", argument="task.module")
        Traceback (most recent call last):
        ...
        ValueError: `task.module` 'math:pi' names a float, not a class or function that builds the object.
    """
    if isinstance(target, str):
        found = import_object(target, argument=argument)
        if not callable(found):
            raise ValueError(f"`{argument}` {target!r} names a {type(found).__name__}, not a class or function "
                             "that builds the object.")
        return found
    if not callable(target):
        raise TypeError(f"`{argument}` must be a class or function that builds the object, or an import string "
                        f"'package.module:attr' naming one, got {target!r}.")
    return target


def keyword_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """``factory``'s parameters that a keyword can set, or ``None`` when it takes ``**kwargs`` or has no
    signature to read (anything goes: the call itself will tell).

    Example::

        >>> list(keyword_parameters(lambda lr, *, depth=2: None)), keyword_parameters(lambda **kw: None)
        (['lr', 'depth'], None)
    """
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {name: p for name, p in parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def check_keywords(factory: Callable[..., Any], kwargs: Mapping[str, Any], key: str, target: str,
                   provided: Iterable[str] = (), list_taken: bool = True) -> None:
    """Check a config section of keyword arguments against the factory it is for, before calling it.

    Args:
        factory: The callable the keywords go to.
        kwargs: The config section's keywords and values.
        key: The section's config key, quoted in messages (e.g. ``"task_kwargs"``).
        target: The factory as messages name it (e.g. ``"`task` 'pkg.mod:factory'"``).
        provided: Keywords the caller passes itself (e.g. ``seed``): they count as set.
        list_taken: Whether a refusal lists every keyword the factory takes (off for one that takes
            dozens, such as ``lightning.pytorch.Trainer``: the closest match is named either way).

    Raises:
        ValueError: for a keyword the factory does not take (with the closest one it does), or an
            argument it requires that is neither in ``kwargs`` nor ``provided``.

    Example::

        >>> check_keywords(lambda hidden=8: None, {"hiden": 3}, "task_kwargs", "`task` 'm:f'")
        Traceback (most recent call last):
        ...
        ValueError: `task_kwargs.hiden` is 3, but `task` 'm:f' takes no argument `hiden` (did you mean `task_kwargs.hidden`?); it takes hidden. Remove or rename `task_kwargs.hiden`.
    """
    parameters = keyword_parameters(factory)
    if parameters is None:
        return
    for name, value in kwargs.items():
        if name not in parameters:
            close = difflib.get_close_matches(str(name), list(parameters), n=1)
            hint = f" (did you mean `{key}.{close[0]}`?)" if close else ""
            taken = f"; it takes {', '.join(parameters) or 'no keyword arguments'}" if list_taken else ""
            raise ValueError(f"`{key}.{name}` is {value!r}, but {target} takes no argument `{name}`{hint}{taken}."
                             f" Remove or rename `{key}.{name}`.")
    given = set(kwargs) | set(provided)
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in given:
            raise ValueError(f"{target} requires the argument `{name}`: set `{key}.{name}`.")
