"""Which parameters each agent controls: the partition of a model into layers."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Union

from torch import nn

from ganno_lightning.layerwise.features import layer_kind

#: How users override the default one-agent-per-module partition: glob patterns over module names
#: (modules matching the same pattern share one agent), or a callable ``(module_name, module) ->
#: agent name`` (``None`` keeps the module as its own agent).
GroupSpec = Union[str, Sequence[str], Callable[[str, nn.Module], Union[str, None]], None]

ROOT_NAME = "(root)"


@dataclass(frozen=True)
class LayerGroup:
    """One agent's share of the model: the parameters of one or more modules.

    Attributes:
        name: The agent's name, used in logged keys (``ganno/lr/<name>``).
        kind: The layer kind of the group's first module (see ``features.LAYER_KINDS``).
        module_names: The modules whose parameters the agent controls, in registration order.
        param_names: Qualified names of the controlled parameters.
        params: The controlled parameters themselves.
    """

    name: str
    kind: str
    module_names: tuple[str, ...]
    param_names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


class LayerPartition:
    """The model's trainable parameters split into agents, one per layer by default.

    Default rule: one agent per module that directly owns trainable parameters
    (``named_parameters(recurse=False)``), in registration order. Frozen parameters are not
    controlled; a parameter shared by two modules belongs to the first.

    Args:
        layers: The groups, in agent order.

    Raises:
        ValueError: If ``layers`` is empty or a parameter appears in two groups.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> LayerPartition.from_module(model).names
        ('0', '2')
        >>> LayerPartition.from_module(model, groups=["*"]).names
        ('*',)
    """

    def __init__(self, layers: Sequence[LayerGroup]) -> None:
        if not layers:
            raise ValueError("A `LayerPartition` needs at least one layer group, got none.")
        owner: dict[int, str] = {}
        for layer in layers:
            for p in layer.params:
                if id(p) in owner:
                    raise ValueError(
                        f"A parameter is in two agents, `{owner[id(p)]}` and `{layer.name}`; each parameter "
                        "must belong to exactly one agent."
                    )
                owner[id(p)] = layer.name
        self.layers: tuple[LayerGroup, ...] = tuple(layers)
        self._agent_of = {pid: i for i, layer in enumerate(self.layers) for pid in (id(p) for p in layer.params)}

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        groups: GroupSpec = None,
        params: Iterable[nn.Parameter] | None = None,
    ) -> LayerPartition:
        """Partition ``model`` into agents.

        Args:
            model: Any ``nn.Module``.
            groups: ``None`` for one agent per parameter-owning module; a glob pattern or list of
                patterns over module names (the first matching pattern names the module's agent);
                or a callable ``(module_name, module) -> agent name or None``.
            params: If given, only these parameters are controlled (e.g. those in the optimizer).

        Raises:
            ValueError: If nothing trainable is left, or a pattern matches no module.
            TypeError: If ``groups`` is of an unsupported type.
        """
        key_of = _group_key_function(groups)
        allowed = None if params is None else {id(p) for p in params}
        seen: set[int] = set()
        order: list[str] = []
        members: dict[str, list[tuple[str, str, nn.Module, nn.Parameter]]] = {}
        for module_name, module in model.named_modules():
            for param_name, p in module.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen or (allowed is not None and id(p) not in allowed):
                    continue
                seen.add(id(p))
                display = module_name or ROOT_NAME
                key = key_of(display, module) or display
                if key not in members:
                    order.append(key)
                    members[key] = []
                qualified = f"{module_name}.{param_name}" if module_name else param_name
                members[key].append((display, qualified, module, p))
        if not order:
            raise ValueError(
                f"`model` ({type(model).__name__}) has no trainable parameter to control: every parameter is "
                "frozen (requires_grad=False) or missing from the optimizer. Unfreeze at least one layer or "
                "remove the GANNO callback."
            )
        if isinstance(groups, (str, list, tuple)):
            patterns = [groups] if isinstance(groups, str) else list(groups)
            unused = [pat for pat in patterns if pat not in members]
            if unused:
                names = sorted({m[0] for entries in members.values() for m in entries})
                raise ValueError(
                    f"`groups` pattern(s) {unused} match no module with trainable parameters. Module names are "
                    f"{names}; use glob patterns over these (e.g. 'encoder.*')."
                )
        layers = []
        for key in order:
            entries = members[key]
            module_names = tuple(dict.fromkeys(e[0] for e in entries))
            layers.append(
                LayerGroup(
                    name=key,
                    kind=layer_kind(entries[0][2]),
                    module_names=module_names,
                    param_names=tuple(e[1] for e in entries),
                    params=tuple(e[3] for e in entries),
                )
            )
        return cls(layers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def agent_of(self, param: nn.Parameter) -> int | None:
        """Index of the agent that controls ``param``, or ``None`` if no agent does."""
        return self._agent_of.get(id(param))

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerGroup]:
        return iter(self.layers)

    def __repr__(self) -> str:
        return f"LayerPartition({', '.join(f'{x.name}:{x.kind}' for x in self.layers)})"


def _group_key_function(groups: GroupSpec) -> Callable[[str, nn.Module], str | None]:
    if groups is None:
        return lambda name, module: None
    if isinstance(groups, (str, list, tuple)):
        patterns = [groups] if isinstance(groups, str) else list(groups)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(
                f"`groups` must be a non-empty glob pattern or list of them, got {groups!r}. "
                "Example: groups=['encoder.*', 'head']."
            )
        return lambda name, module: next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)
    if callable(groups):

        def checked(name: str, module: nn.Module) -> str | None:
            key = groups(name, module)
            if key is not None and not (isinstance(key, str) and key):
                raise TypeError(
                    f"`groups` callable must return a non-empty str or None, got {key!r} for module `{name}`."
                )
            return key

        return checked
    raise TypeError(
        f"`groups` must be None, a glob pattern, a list of patterns or a callable, got {type(groups).__name__}."
    )
