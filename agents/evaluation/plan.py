"""The plan: conditions, tasks and the distinct runs they need."""

import fnmatch
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ganno_lightning.agents.evaluation.config import entry_length, plain_value
from ganno_lightning.agents.peers import PEERS, peer_version
from ganno_lightning.tuning.grid import factors_past_the_edge

#: Method names of peers start with it: ``peer:prodigy``.
PEER_PREFIX = "peer:"


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: the initial-LR factor, and whether tasks are the deeper variants."""

    name: str
    factor: float
    deeper: bool = False


def conditions_of(cfg: DictConfig) -> List[Condition]:
    """``init_lr_x<f>`` per ``init_lr_factors`` entry, then ``deeper_x2`` when ``deeper`` is set.

    Example::

        >>> from ganno_lightning.agents.evaluation.config import load_config
        >>> [c.name for c in conditions_of(load_config({"init_lr_factors": [1.0, 10.0, 0.1]}))]
        ['init_lr_x1', 'init_lr_x10', 'init_lr_x0.1', 'deeper_x2']
    """
    out = [Condition(f"init_lr_x{f:g}", float(f)) for f in cfg.init_lr_factors]
    if cfg.deeper:
        out.append(Condition("deeper_x2", 1.0, deeper=True))
    return out


def task_specs(cfg: DictConfig, deeper: bool) -> List[Dict[str, Any]]:
    """Plain-data descriptions of the suite's tasks (what a worker needs to rebuild each one).

    Task ``t`` of suite entry ``i`` is drawn from a generator seeded by ``(task_seed, i, t)``; its
    deeper variant uses the same generator with only the depth range replaced, and since every
    range field consumes exactly one draw, it has the same width, LR, batch size and optimizer.
    """
    specs = []
    for i, entry in enumerate(cfg.suite):
        plain = OmegaConf.to_container(entry, resolve=True)
        steps, val_every = entry_length(cfg, entry)
        for t in range(entry.tasks):
            specs.append({
                "id": f"{entry.family}#{t}" + (f"@{steps}steps" if entry.steps is not None else "")
                      + ("@deeper" if deeper else ""),
                "entry": i,
                "family": entry.family,
                "split": entry.split,
                "train": plain["train"],
                "heldout": plain["heldout"],
                "deeper": deeper,
                "sample_seed": (int(cfg.task_seed) * 1_000_003 + i * 10_007 + t) % (2**62),
                # only when not the default, so that earlier evaluations' run keys still match
                **({"lr_sampling": entry.lr_sampling} if entry.lr_sampling != "ranges" else {}),
                **({"steps": steps} if entry.steps is not None else {}),
                **({"val_every": val_every} if entry.val_every is not None else {}),
            })
    return specs


def check_only_tasks(cfg: DictConfig) -> None:
    """Every ``only_tasks`` pattern must select some task of the suite (a typo would run nothing).

    Raises:
        ValueError: naming the pattern and showing what task ids look like.
    """
    ids = [spec["id"] for c in conditions_of(cfg) for spec in task_specs(cfg, c.deeper)]
    for i, pattern in enumerate(cfg.only_tasks):
        if not fnmatch.filter(ids, pattern):
            raise ValueError(f"`only_tasks[{i}]` ({pattern!r}) matches no task of the suite; task ids look like "
                             f"{ids[0]!r} (all: {', '.join(ids[:6])}{', ...' if len(ids) > 6 else ''}).")


def selected(cfg: DictConfig, job: Dict[str, Any]) -> bool:
    """Whether ``job``'s task is one ``only_tasks`` selects (every task when it is empty)."""
    return not cfg.only_tasks or any(fnmatch.fnmatch(job["task"]["id"], p) for p in cfg.only_tasks)


def _lr_key(factor: float) -> str:
    return f"{float(factor):g}"


def plan_runs(cfg: DictConfig) -> List[Dict[str, Any]]:
    """Every distinct run the conditions need, as plain-data jobs for :func:`run_one`.

    Per task and seed: the agent at each condition's factor, each schedule at every factor of
    ``lr_grid`` and of the conditions (a factor in both is one run), the constant LR at each
    condition's factor times each of ``noise_factors``, and each peer at each condition's factor,
    or once (at x1) for an LR-free peer, whose runs do not depend on the LR.
    """
    conditions = conditions_of(cfg)
    agent = {"path": cfg.agent.path, "interval": cfg.agent.interval, "exploration": cfg.agent.exploration,
             "sha256": _agent_digest(cfg.agent.path)}
    if cfg.agent.recover_on_spike is not None:  # only when set: runs without it keep the ids earlier evaluations stored
        agent["recover_on_spike"] = bool(cfg.agent.recover_on_spike)
    if cfg.agent.spike_factor is not None:  # likewise
        agent["spike_factor"] = float(cfg.agent.spike_factor)
    if cfg.agent.decision_steps is not None:  # likewise: set only when it overrides the agent's own
        agent["decision_steps"] = plain_value(cfg.agent.decision_steps)
    if cfg.agent.scale_bounds is not None:  # likewise
        agent["scale_bounds"] = [float(b) for b in plain_value(cfg.agent.scale_bounds)]
    if cfg.agent.min_change is not None:  # likewise
        agent["min_change"] = float(cfg.agent.min_change)
    if cfg.agent.schedule is not None:  # likewise: set only when the user's schedule is not a constant LR
        agent["schedule"] = cfg.agent.schedule
    if cfg.agent.prior is not None:  # likewise: set only when it overrides the agent's own
        agent["prior"] = cfg.agent.prior
    if cfg.agent.prior_above is not None:  # likewise
        agent["prior_above"] = int(cfg.agent.prior_above)
    if cfg.agent.lr_search is not None:  # likewise
        agent["lr_search"] = plain_value(cfg.agent.lr_search)
    jobs: Dict[str, Dict[str, Any]] = {}
    for deeper in sorted({c.deeper for c in conditions}):
        factors = [c.factor for c in conditions if c.deeper == deeper]
        baseline_factors = sorted({float(f) for f in [*cfg.lr_grid, *factors]})
        for task in task_specs(cfg, deeper):
            for seed in cfg.seeds:
                methods = [("agent", f) for f in factors] + [(s, f) for s in cfg.schedules for f in baseline_factors]
                methods += [("constant", f * n) for f in factors for n in cfg.noise_factors]
                methods += [(peer_method(p), f) for p in cfg.peers for f in (factors if PEERS[p].uses_lr else [1.0])]
                for method, factor in methods:
                    job = _job(cfg, task, seed, method, factor, agent if method == "agent" else None)
                    jobs.setdefault(job["id"], job)
    return list(jobs.values())


def _job(cfg: DictConfig, task: Dict[str, Any], seed: int, method: str, factor: float,
         agent: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """One run as plain data for :func:`run_one`, with its id and the key of everything it depends on."""
    job = {
        "task": task,
        "seed": int(seed),
        "method": method,
        "lr_factor": float(factor),
        "steps": int(task.get("steps", cfg.steps)),
        "val_every": int(task.get("val_every", cfg.val_every)),
        "torch_threads": int(cfg.torch_threads),
        "agent": agent,
        "peer": _peer_info(method),
    }
    job["id"] = run_id(task["id"], seed, method, factor)
    job["key"] = _job_key(job)
    return job


def noise_method(factor: float) -> str:
    """The method name of the constant LR at ``factor`` times a condition's LR (the noise floor).

    Example::

        >>> noise_method(0.97)
        'constant@init_x0.97'
    """
    return f"constant@init_x{factor:g}"


def peer_method(name: str) -> str:
    """The method name of the peer ``name`` in runs and reports: ``peer:<name>``.

    Example::

        >>> peer_method("prodigy_cosine"), peer_name("peer:prodigy_cosine"), peer_name("cosine")
        ('peer:prodigy_cosine', 'prodigy_cosine', None)
    """
    return f"{PEER_PREFIX}{name}"


def peer_name(method: str) -> Optional[str]:
    """The peer a method name stands for, ``None`` for the agent and the schedules."""
    return method[len(PEER_PREFIX):] if method.startswith(PEER_PREFIX) else None


def _peer_info(method: str) -> Optional[Dict[str, Any]]:
    name = peer_name(method)
    return None if name is None else {"name": name, "package": peer_version(name)}


def run_id(task_id: str, seed: int, method: str, factor: float) -> str:
    """The name of a run in ``results.json``, e.g. ``mlp_digits#0|seed=1|cosine|x3``."""
    return f"{task_id}|seed={seed}|{method}|x{_lr_key(factor)}"


def _job_key(job: Dict[str, Any]) -> str:
    # Everything that changes a run's outcome; a finished run is reused only under the same key.
    spec = {k: job[k] for k in ("task", "seed", "method", "lr_factor", "steps", "val_every", "agent")}
    if job["peer"] is not None:  # only peers: the keys of other runs stay those of earlier logs, still reusable
        spec["peer"] = job["peer"]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _agent_digest(path: str) -> Optional[str]:
    resolved = agent_path(path)
    return hashlib.sha256(resolved.read_bytes()).hexdigest()[:16] if resolved.is_file() else None


def agent_path(path: str) -> Path:
    from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH

    return DEFAULT_AGENT_PATH if path == "default" else Path(path)


def tuning_grids(cfg: DictConfig, runs: Dict[str, Dict[str, Any]],
                 grids: Optional[Dict[str, List[float]]] = None) -> Tuple[Dict[str, List[float]], List[Dict[str, Any]]]:
    """Each (task, schedule)'s tuning grid, and the runs still needed to take it past its edges.

    Starts from ``lr_grid`` (or ``grids``, an earlier round's), adds the factors of
    :func:`~ganno_lightning.tuning.grid.factors_past_the_edge` where every run of the
    grid has finished, and returns the jobs of the added factors that ``runs`` lacks. Call it again
    with the grids it returned once those jobs ran, until it returns no job.

    Returns:
        ``grid_key(task_id, schedule)`` -> sorted factors, and the jobs to run.
    """
    grids = dict(grids or {})
    todo: Dict[str, Dict[str, Any]] = {}
    base = sorted(float(f) for f in cfg.lr_grid)
    for deeper in sorted({c.deeper for c in conditions_of(cfg)}):
        for task in task_specs(cfg, deeper):
            for schedule in cfg.schedules:
                key = grid_key(task["id"], schedule)
                factors = grids.setdefault(key, list(base))
                ids = {f: [run_id(task["id"], seed, schedule, f) for seed in cfg.seeds] for f in factors}
                if not cfg.extend_grid or any(i not in runs for i in sum(ids.values(), [])):
                    continue
                losses = {f: [runs[i]["final_val_loss"] for i in ids[f]] for f in factors}
                for factor in factors_past_the_edge(losses):
                    grids[key] = sorted({*grids[key], factor})
                    for seed in cfg.seeds:
                        job = _job(cfg, task, seed, schedule, factor, None)
                        if job["id"] not in runs:
                            todo.setdefault(job["id"], job)
    return grids, list(todo.values())


def grid_key(task_id: str, schedule: str) -> str:
    """The key of a (task, schedule)'s tuning grid in ``results.json``."""
    return f"{task_id}|{schedule}"