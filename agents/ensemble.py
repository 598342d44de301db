"""``ganno-ensemble``: combine meta-trained agents (e.g. one per training seed) into one agent file.

Run::

    ganno-ensemble runs/seed0/agent.pt runs/seed1/agent.pt runs/seed2/agent.pt --out agent.pt

The result acts as the mixture of the members' policies
(:meth:`~ganno_lightning.layerwise.agent.GANNOAgent.ensemble`) and loads like any agent file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ganno_lightning.layerwise.agent import AgentCheckpointError, GANNOAgent


def build_ensemble(member_paths: Sequence[str | Path], out: str | Path) -> GANNOAgent:
    """Load the agents at ``member_paths``, ensemble them and save the result at ``out`` (atomically).

    Raises:
        ValueError: If fewer than two members are given, a path is given twice, ``out`` is one of
            the members, or the members act differently.
        AgentCheckpointError: If a member file cannot be loaded.

    Example::

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> paths = [GANNOAgent.create(seed=s).save(folder / f"seed{s}.pt") for s in range(2)]
        >>> build_ensemble(paths, folder / "ensemble.pt").training_config["ensemble"][1]["source"].endswith("seed1.pt")
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
        raise ValueError(f"`--out` is {str(out)!r}, one of the members: write the ensemble to a new file.")
    members = [GANNOAgent.load(p) for p in paths]
    ensemble = GANNOAgent.ensemble(members, sources=[str(p) for p in paths])
    ensemble.save(out)
    return ensemble


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ganno-ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", help="agent files (the agent.pt that ganno-train exports)")
    parser.add_argument("--out", required=True, help="where to write the ensemble's agent file")
    args = parser.parse_args(argv)
    try:
        ensemble = build_ensemble(args.members, args.out)
    except (ValueError, AgentCheckpointError) as err:
        parser.error(str(err))
    print(f"wrote {args.out}: {len(args.members)} members, fingerprint {ensemble.fingerprint()}")


if __name__ == "__main__":
    main()
