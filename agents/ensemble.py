"""``ganno-ensemble``: combine meta-trained agents (e.g. one per training seed) into one agent file.

From agent files::

    ganno-ensemble runs/seed0/agent.pt runs/seed1/agent.pt runs/seed2/agent.pt --out agent.pt

Routed by the fit's length instead of mixed (the first agent acts in fits of up to 600 optimizer
steps, the second in longer ones; :meth:`~ganno_lightning.layerwise.agent.GANNOAgent.routed`)::

    ganno-ensemble runs/short/agent.pt runs/long/agent.pt --boundaries 600 --out agent.pt

From recipes, reproducibly (each member is trained by ``ganno-train`` unless it already has been;
a killed run continues where its last checkpoint left it)::

    ganno-ensemble configs/ganno_ensemble.yaml [key=value ...]

The result acts as the mixture of the members' policies
(:meth:`~ganno_lightning.layerwise.agent.GANNOAgent.ensemble`), or as the member of the fit's length
(``boundaries``), and loads like any agent file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from ganno_lightning.agents.train import train
from ganno_lightning.config import ConfigCommandLine
from ganno_lightning.config import load_config as load_with_schema
from ganno_lightning.layerwise.agent import AgentCheckpointError, GANNOAgent

SEE = "configs/ganno_ensemble.yaml"


@dataclass
class EnsembleMember:
    """One member: a trained agent file, or a ``ganno-train`` config (with overrides) to train it from."""

    agent: Optional[str] = None
    config: Optional[str] = None
    overrides: list[str] = field(default_factory=list)  # e.g. [run.seed=1]


@dataclass
class EnsembleConfig:
    """What ``ganno-ensemble CONFIG.yaml`` builds; see ``configs/ganno_ensemble.yaml``."""

    members: list[EnsembleMember] = MISSING
    out_dir: str = "runs/ganno_ensemble"  # member i trains in <out_dir>/member<i>; the ensemble is <out_dir>/agent.pt
    export: Optional[str] = None  # also write the ensemble here
    # set: route fits by their length instead of mixing, member k acting in fits of up to boundaries[k] optimizer
    # steps (shortest fits' member first; one boundary fewer than the members)
    boundaries: Optional[list[int]] = None


def load_config(source: Any, overrides: Sequence[str] = ()) -> EnsembleConfig:
    """An ensemble config plus ``key=value`` overrides, checked: at least two members, each an agent or a config.

    Raises:
        ValueError: A member with neither or both of ``agent`` and ``config``, overrides without a
            config, fewer than two members, or any error of :func:`~ganno_lightning.config.load_config`.
    """
    config = OmegaConf.to_object(load_with_schema(EnsembleConfig, source, overrides, see=SEE))
    if len(config.members) < 2:
        raise ValueError(f"`members` must list at least two agents to ensemble, got {len(config.members)}. See {SEE}.")
    for index, member in enumerate(config.members):
        if (member.agent is None) == (member.config is None):
            raise ValueError(f"`members[{index}]` must set exactly one of `agent` (a trained agent file) and `config` "
                             f"(a ganno-train config to train it from), got agent={member.agent!r}, "
                             f"config={member.config!r}.")
        if member.agent is not None and member.overrides:
            raise ValueError(f"`members[{index}].overrides` ({member.overrides}) apply to a `config` to train from; "
                             f"member {index} is the trained agent {member.agent!r}. Drop them, or train it from a "
                             "config.")
    if config.boundaries is not None and len(config.boundaries) != len(config.members) - 1:
        raise ValueError(f"`boundaries` must hold one fit length fewer than the {len(config.members)} members it "
                         f"routes, got {config.boundaries}; e.g. [600] for two. See {SEE}.")
    return config


def member_source(member: EnsembleMember) -> str:
    """How a member is recorded in the ensemble's file: its agent file, or the command that trains it."""
    return member.agent if member.agent is not None else " ".join(["ganno-train", member.config, *member.overrides])


def build_from_config(config: EnsembleConfig) -> Path:
    """Train the members that need it (resuming any a killed run left), ensemble them, and save; returns the file.

    Each recipe member trains in ``<out_dir>/member<i>`` with ``run.resume=true``, so a finished
    member is read back, not retrained, and a rerun after a crash loses no finished iteration.
    """
    out_dir = Path(config.out_dir)
    paths = []
    for index, member in enumerate(config.members):
        if member.agent is not None:
            paths.append(Path(member.agent))
            continue
        print(f"member {index}: {member_source(member)}", flush=True)
        paths.append(train(member.config, [*member.overrides, f"run.out_dir={out_dir / f'member{index}'}",
                                           "run.resume=true", "run.export=null"]))
    ensemble = build_ensemble(paths, out_dir / "agent.pt", sources=[member_source(m) for m in config.members],
                              boundaries=config.boundaries)
    if config.export is None:
        return out_dir / "agent.pt"
    Path(config.export).parent.mkdir(parents=True, exist_ok=True)
    return ensemble.save(config.export)


def build_ensemble(member_paths: Sequence[str | Path], out: str | Path, sources: Sequence[str] | None = None,
                   boundaries: Sequence[int] | None = None) -> GANNOAgent:
    """Load the agents at ``member_paths``, ensemble them, save the result at ``out`` (atomically) and return it.

    Args:
        member_paths: The members' agent files.
        out: Where to write the ensemble.
        sources: What to record as each member's source; their paths by default.
        boundaries: Route fits by their length at these optimizer steps instead of mixing the members
            (:meth:`~ganno_lightning.layerwise.agent.GANNOAgent.routed`).

    Raises:
        ValueError: If fewer than two members are given, a path is given twice, ``out`` is one of
            the members, or the members act differently.
        AgentCheckpointError: If a member file cannot be loaded.

    Example::

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> paths = [GANNOAgent.create(seed=s).save(folder / f"seed{s}.pt") for s in range(2)]
        >>> ensemble = build_ensemble(paths, folder / "ensemble.pt")
        >>> ensemble.training_config["ensemble"][1]["source"] == str(paths[1])
        True
        >>> GANNOAgent.load(folder / "ensemble.pt").fingerprint() == ensemble.fingerprint()
        True
    """
    paths = [Path(p) for p in member_paths]
    if len(paths) < 2:
        raise ValueError(f"`members` must list at least two agent files to ensemble, got {[str(p) for p in paths]}.")
    resolved = [p.resolve() for p in paths]
    repeated = sorted({str(p) for p, r in zip(paths, resolved) if resolved.count(r) > 1})
    if repeated:
        raise ValueError(f"`members` lists {repeated} more than once; an ensemble weights each member equally, so "
                         "name each agent file once.")
    if Path(out).resolve() in resolved:
        raise ValueError(f"`out` is {str(out)!r}, one of the members: write the ensemble to a new file.")
    members = [GANNOAgent.load(p) for p in paths]
    sources = [str(p) for p in paths] if sources is None else sources
    ensemble = (GANNOAgent.ensemble(members, sources) if boundaries is None
                else GANNOAgent.routed(members, boundaries, sources))
    ensemble.save(out)
    return ensemble


def main(argv: Sequence[str] | None = None) -> int:
    """``ganno-ensemble CONFIG.yaml [key=value ...]`` or ``ganno-ensemble AGENT.pt AGENT.pt ... --out FILE``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        cli = ConfigCommandLine("ganno-ensemble", __doc__, EnsembleConfig, see=SEE)
        config = cli.load(load_config, cli.parse_args(argv))
        path, count, routed = build_from_config(config), len(config.members), config.boundaries is not None
    else:
        parser = argparse.ArgumentParser(prog="ganno-ensemble", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("members", nargs="+", help="agent files (the agent.pt that ganno-train exports)")
        parser.add_argument("--out", required=True, help="where to write the ensemble's agent file")
        parser.add_argument("--boundaries", nargs="+", type=int, default=None, metavar="STEPS",
                            help="route fits by their length instead of mixing: the first agent acts in fits of up "
                                 "to the first boundary's optimizer steps, the next above it, and so on")
        args = parser.parse_args(argv)
        try:
            build_ensemble(args.members, args.out, boundaries=args.boundaries)
        except (ValueError, AgentCheckpointError) as err:
            parser.error(str(err))
        path, count, routed = args.out, len(args.members), args.boundaries is not None
    print(f"{'routed agent' if routed else 'ensemble'} of {count} agents written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
