"""Issue #18 diagnostic: can the teacher's actions be predicted from what the agent observes at all?

The imitation recipes' agents match their teacher's action in only 13-26% of decisions (imitation
cross-entropy 1.40 nats of a uniform 1.95 with 7 actions). Either the teacher is unpredictable from
the observations (a task's best LR is not in them), or the small recurrent actor underfits it. This
script tells the two apart: it replays runs of a recipe's meta-training distribution under the
teacher (each agent's action replaced by a uniformly random one with probability ``--epsilon``, to
visit the states an imperfect student reaches), records every valid agent's observation row with the
teacher's action, and fits off-the-shelf classifiers to them, scored on runs they did not see
(``GroupKFold`` over runs). Two teachers are scored on the same states: the cell expert (the recipe's
``algo.expert_schedule``, aimed at the task's cell's calibrated best LR) and, with ``--task-pool``,
the per-task expert (aimed at each run's own tuned constant LR), whose actions the replay follows.

Inputs per row: the observation now, and with memory also the agent's observation at its first
decision (a stand-in for the actor's GRU, which sees the whole run). Held-out cross-entropy near the
class-frequency prior's means the teacher is not predictable from these inputs; far below the
trained actor's means the actor underfits. With ``--agent``, that actor's own cross-entropy and
accuracy are measured on the same rows (its GRU carried through each run), no fitting involved.

    PYTHONPATH=. python benchmarks/imitation_learnability.py \\
        configs/experiments/ganno_imitation_calibrated_expert_candidate.yaml env.unknown_total_prob=0 \\
        env.action_multipliers=wide env.decision_steps=front_loaded --episodes 100 \\
        --task-pool benchmarks/results/task_pool_check_seeds10000.json [--agent <agent.pt>] \\
        --out benchmarks/results/imitation_learnability_early.md
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tensordict import TensorDictBase

from expert_ceiling import TaskExpertPolicy, check_agent_matches, expert_policy, recipe_env_config, task_pool_of
from ganno_lightning.envs import keys
from ganno_lightning.envs.config import env_config
from ganno_lightning.envs.replay import Policy, replay
from ganno_lightning.layerwise.agent import GANNOAgent

#: The teachers scored, by the name of their rows.
CELL_EXPERT, TASK_EXPERT = "cell expert", "per-task expert"
#: The recorded trained agent's action log-probabilities (``--agent``).
AGENT = "agent"


class RecordingPolicy:
    """Acts as ``behaviour`` (each agent's action random with probability ``epsilon``) and records, per valid agent
    and decision, its observation, its observation at the run's first decision and every teacher's action; with
    ``agent``, also that trained agent's action log-probabilities (its memory carried through the run)."""

    def __init__(self, behaviour: Policy, teachers: dict[str, Policy], num_actions: int, epsilon: float,
                 generator: torch.Generator, agent: GANNOAgent | None = None) -> None:
        self.behaviour, self.teachers, self.num_actions = behaviour, teachers, num_actions
        self.epsilon, self.generator, self.agent, self.agent_state = epsilon, generator, agent, None
        self.first: torch.Tensor | None = None
        self.rows: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], int]] = []  # (..., decision index)

    def __call__(self, td: TensorDictBase) -> torch.Tensor:
        # as the training's agreement: valid agents whose task's best LR is known (else every teacher keeps the LR)
        observation, valid = td[keys.OBSERVATION], td[keys.MASK] & (td[keys.PRIVILEGED][..., 1] > 0)
        if self.first is None:
            self.first = observation.clone()
        targets = {name: teacher(td)[valid].numpy() for name, teacher in self.teachers.items()}
        if self.agent is not None:
            with torch.no_grad():
                logits, self.agent_state = self.agent.action_logits(observation, self.agent_state, td[keys.MASK])
            targets[AGENT] = torch.log_softmax(logits, dim=-1)[valid].numpy()
        self.rows.append((observation[valid].numpy(), self.first[valid].numpy(), targets, len(self.rows)))
        actions = self.behaviour(td)
        explore = torch.rand(actions.shape, generator=self.generator) < self.epsilon
        random = torch.randint(self.num_actions, actions.shape, generator=self.generator)
        return torch.where(explore, random, actions)


def collect(config: dict, algo: dict, seeds: range, pool_tasks: dict, epsilon: float,
            agent: GANNOAgent | None = None) -> dict[str, np.ndarray]:
    """Every recorded row of the runs drawn from ``seeds``: ``now``, ``first``, ``run``, ``decision`` (its index in
    the run) and one target per teacher."""
    multipliers = [float(m) for m in env_config(config).action_multipliers]
    now, first, runs, decisions, targets = [], [], [], [], {}
    generator = torch.Generator().manual_seed(seeds.start)
    for seed in seeds:
        teachers = {CELL_EXPERT: expert_policy(multipliers, algo)}
        if pool_tasks:
            teachers[TASK_EXPERT] = TaskExpertPolicy(multipliers, pool_tasks[seed])
        behaviour = teachers[TASK_EXPERT if pool_tasks else CELL_EXPERT]
        recorder = RecordingPolicy(behaviour, teachers, len(multipliers), epsilon, generator, agent)
        replay(config, seed, recorder)
        for row_now, row_first, row_targets, decision in recorder.rows:
            now.append(row_now)
            first.append(row_first)
            runs.append(np.full(len(row_now), seed))
            decisions.append(np.full(len(row_now), decision))
            for name, target in row_targets.items():
                targets.setdefault(name, []).append(target)
    if not now:
        raise ValueError("No decision had a known best LR to teach: the recipe's family must draw its LRs "
                         "around their cells' best (`lr_sampling: around_best`).")
    data = {"now": np.concatenate(now), "first": np.concatenate(first), "run": np.concatenate(runs),
            "decision": np.concatenate(decisions)}
    data.update({name: np.concatenate(parts) for name, parts in targets.items()})
    return data


def held_out_scores(inputs: np.ndarray, target: np.ndarray, groups: np.ndarray, num_actions: int,
                    folds: int = 5, tree_iterations: int = 200) -> dict[str, tuple[float, float]]:
    """Held-out (cross-entropy in nats, accuracy) per model, over ``folds`` folds that keep each run in one fold."""
    models = {
        "class frequencies": None,
        "logistic regression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "gradient-boosted trees": lambda: HistGradientBoostingClassifier(max_iter=tree_iterations, random_state=0),
    }
    scores = {}
    for name, make in models.items():
        log_loss, hits = 0.0, 0
        for train, test in GroupKFold(folds).split(inputs, target, groups):
            proba = np.full((len(test), num_actions), 1e-6)
            if make is None or len(np.unique(target[train])) < 2:  # a model needs two classes to fit
                counts = np.bincount(target[train], minlength=num_actions)
                proba += counts / counts.sum()
            else:
                model = make().fit(inputs[train], target[train])
                proba[:, model.classes_] += model.predict_proba(inputs[test])
            proba /= proba.sum(axis=1, keepdims=True)
            log_loss -= np.log(proba[np.arange(len(test)), target[test]]).sum()
            hits += int((proba.argmax(axis=1) == target[test]).sum())
        scores[name] = (log_loss / len(target), hits / len(target))
    return scores


def report(data: dict[str, np.ndarray], num_actions: int, command: str, minutes: float) -> str:
    teachers = [name for name in (CELL_EXPERT, TASK_EXPERT) if name in data]
    lines = [
        "# Can the teacher's actions be predicted from the agent's observations? (issue #18)", "",
        f"`{command}`", "",
        f"{len(np.unique(data['run']))} runs, {len(data['run'])} (agent, decision) rows, {num_actions} actions "
        f"(uniform: {math.log(num_actions):.2f} nats); {minutes:.1f} min. Held-out over 5 folds of whole runs. "
        "Inputs: the observation now; with memory, also the agent's observation at its run's first decision. "
        "The first decision's rows alone are free of the teacher's earlier moves, which the LR scale shows later "
        "in a run.", "",
        "| teacher | inputs | model | cross-entropy (nats) | accuracy |", "|---|---|---|---|---|"]
    every, first = np.ones(len(data["run"]), dtype=bool), data["decision"] == 0
    inputs = {"now": (data["now"], every),
              "now + first decision": (np.concatenate([data["now"], data["first"]], axis=1), every),
              "now, first decisions only": (data["now"], first)}
    for teacher in teachers:
        for input_name, (x, rows) in inputs.items():
            target, runs = data[teacher][rows], data["run"][rows]
            for model, (nats, accuracy) in held_out_scores(x[rows], target, runs, num_actions).items():
                lines.append(f"| {teacher} | {input_name} | {model} | {nats:.3f} | {accuracy:.0%} |")
        if AGENT in data:  # the trained actor, fitted on its own training runs, scored on these
            for input_name, rows in (("the run so far (its GRU)", every), ("first decisions only", first)):
                target = data[teacher][rows]
                log_probs = data[AGENT][rows][np.arange(len(target)), target]
                accuracy = float((data[AGENT][rows].argmax(axis=1) == target).mean())
                lines.append(f"| {teacher} | {input_name} | trained agent | {-log_probs.mean():.3f} | {accuracy:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a meta-training recipe (its env, family and algo sections are read)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe, e.g. env.unknown_total_prob=0")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=10000, help="seeds first-seed.. (not the training's)")
    parser.add_argument("--epsilon", type=float, default=0.3, help="chance that an agent acts at random")
    parser.add_argument("--task-pool", help="a pool over these seeds: the replay follows the per-task expert")
    parser.add_argument("--agent", help="a trained agent file: also score its own action probabilities on these rows")
    parser.add_argument("--out", required=True, help="a Markdown report")
    args = parser.parse_args(argv)
    if args.episodes < 5:
        parser.error(f"--episodes must be at least 5 (one run per fold), got {args.episodes}.")
    if not 0.0 <= args.epsilon <= 1.0:
        parser.error(f"--epsilon must be in [0, 1], got {args.epsilon}.")
    config, algo = recipe_env_config(args.config, args.overrides)
    seeds = range(args.first_seed, args.first_seed + args.episodes)
    pool_tasks = task_pool_of(parser, args, config, seeds) if args.task_pool else {}
    started = time.perf_counter()
    agent = GANNOAgent.load(args.agent) if args.agent else None
    if agent is not None:
        check_agent_matches(parser, agent, env_config(config))
    data = collect(config, algo, seeds, pool_tasks, args.epsilon, agent)
    num_actions = len(env_config(config).action_multipliers)
    command = "PYTHONPATH=. python benchmarks/imitation_learnability.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = report(data, num_actions, command, (time.perf_counter() - started) / 60)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
