"""One run (in a worker process or in this one): a zoo task trained by a real Trainer."""

import math
import tempfile
import time
import warnings
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

import torch

from ganno_lightning.agents.evaluation.config import deeper_family
from ganno_lightning.agents.evaluation.plan import peer_name
from ganno_lightning.trials.curve import LearningCurve
from ganno_lightning.trials.trainer import quiet_run, short_run_trainer


def build_task(spec: Dict[str, Any], seed: int):
    """Rebuild the task ``spec`` (from :func:`task_specs`) with weights and data order set by ``seed``.

    Every method run on the same ``(spec, seed)`` gets the same initial weights and batch order,
    so their results are paired.

    Example::

        >>> from ganno_lightning.agents.evaluation.config import load_config
        >>> from ganno_lightning.agents.evaluation.plan import task_specs
        >>> spec = task_specs(load_config({"suite": [{"family": "mlp_digits", "tasks": 1}]}), deeper=False)[0]
        >>> a, b = build_task(spec, seed=0), build_task(spec, seed=0)
        >>> a.name == b.name and bool((a.module.net[0].weight == b.module.net[0].weight).all())
        True
    """
    from ganno_lightning.envs.tasks import ZooModule

    family = _family(spec, spec.get("lr_sampling", "ranges"))
    generator = torch.Generator().manual_seed(int(spec["sample_seed"]))
    torch.manual_seed((int(spec["sample_seed"]) * 7919 + int(seed)) % (2**62))  # zoo weights use the global RNG
    task = family.sample(generator, spec["split"])
    if isinstance(task.module, ZooModule):
        task.module.seed = task.info["seed"] + int(seed)  # the training loader shuffles by `seed`
    return task


def missing_lr_cells(specs: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The best-LR table's cells that ``around_best`` tasks of ``specs`` need and the table lacks.

    Returns:
        Cell -> its first task as ``ganno-calibrate-lrs`` takes it (``cells_file``):
        ``{"family", "split", "hp", "seed"}``; empty when every cell is calibrated.
    """
    from ganno_lightning.envs.tasks.best_lr import load_table
    from ganno_lightning.envs.tasks.ranges import draw_seed

    calibrated = load_table().get("cells", {})
    missing: Dict[str, Dict[str, Any]] = {}
    for spec in specs:
        if spec.get("lr_sampling", "ranges") != "around_best":
            continue
        cell, hp, generator = _cell_draw(spec)
        if cell not in calibrated:
            missing.setdefault(cell, {"family": spec["family"], "split": spec["split"], "hp": hp,
                                      "seed": draw_seed(generator)})
    return missing


def task_best_lr(spec: Dict[str, Any]) -> Optional[float]:
    """The calibrated best constant LR of an ``around_best`` task's cell (``None`` for other tasks).

    Read from the table without building the task: the cell comes from the same first draw.
    """
    if spec.get("lr_sampling", "ranges") != "around_best":
        return None
    from ganno_lightning.envs.tasks.best_lr import best_lr

    return best_lr(_cell_draw(spec)[0])


def _cell_draw(spec: Dict[str, Any]):
    """``(cell, hp, generator)``: the first draw of ``spec``'s task, the one ``around_best`` looks its
    cell up with, and the generator after it."""
    family = _family(spec, "ranges")
    generator = torch.Generator().manual_seed(int(spec["sample_seed"]))
    hp = family.ranges(spec["split"]).sample(generator)
    return family.lr_cell(hp), hp, generator


def _family(spec: Dict[str, Any], lr_sampling: str):
    from ganno_lightning.envs.tasks import make_family

    if spec["deeper"]:
        return deeper_family(spec["family"], spec["split"], spec["train"], spec["heldout"], lr_sampling=lr_sampling)
    return make_family(spec["family"], train=spec["train"], heldout=spec["heldout"], lr_sampling=lr_sampling)


def run_one(job: Dict[str, Any]) -> Dict[str, Any]:
    """Train one job from :func:`plan_runs` with a real ``lightning.Trainer``; never raises.

    A diverging run (non-finite training or validation loss: the run stops there) comes back with
    ``status="diverged"`` and ``final_val_loss=inf``; any other error with ``status="failed"``, the error in ``reason`` and
    ``final_val_loss=inf``, so that one run can never stop the evaluation.

    Returns:
        Plain data: the job's identity, ``task_name``, ``num_layers``, ``lr`` (initial), ``status``,
        ``final_val_loss``, ``final_val_acc`` (logged ``val_acc``, else argmax accuracy for
        classifiers, else ``None``), ``curve`` (``[step, val_loss]`` per check, ``inf`` where not
        finite), ``steps_done``,
        ``seconds``, ``torch`` (the version that trained it), and for the agent its ``schedule``
        (``LRSchedule.state_dict()``), after an initial LR search ``lr_search`` (the chosen
        ``factor``, the trials' ``steps`` and each factor's ``scores``), and where it recovers from loss
        spikes, its ``rollbacks``.
    """
    start = time.perf_counter()
    result: Dict[str, Any] = {
        "id": job["id"], "key": job["key"], "task": job["task"]["id"], "seed": job["seed"], "method": job["method"],
        "lr_factor": job["lr_factor"], "status": "failed", "reason": "", "final_val_loss": math.inf,
        "final_val_acc": None, "curve": [], "steps_done": 0, "torch": torch.__version__,
    }
    trainer = curve = ganno = None
    with quiet_run(job["torch_threads"]):  # restored after: in-process runs share the caller's settings
        try:
            from ganno_lightning.agents.baselines import scale_initial_lr, with_schedule

            task = build_task(job["task"], job["seed"])
            module = task.module
            result.update(task_name=task.name, num_layers=task.info.get("num_layers"), base_lr=task.info.get("lr"))
            result["lr"] = scale_initial_lr(module, job["lr_factor"])
            result["initial_val_loss"] = _initial_val_loss(module)
            if job["method"] == "agent":
                from ganno_lightning.layerwise.agent import GANNOAgent
                from ganno_lightning.layerwise.callback import GANNOCallback

                agent = job["agent"]
                if agent.get("schedule"):  # the user's own scheduler, which the agent then acts around
                    with_schedule(module, agent["schedule"], job["steps"])
                ganno = GANNOCallback(GANNOAgent.from_source(agent["path"]), interval=agent["interval"],
                                      decision_steps=agent.get("decision_steps"), scale_bounds=agent.get("scale_bounds"),
                                      min_change=agent.get("min_change", 1.0), prior=agent.get("prior"),
                                      prior_above=agent.get("prior_above"), lr_search=agent.get("lr_search"),
                                      exploration=agent["exploration"], seed=job["seed"],
                                      recover_on_spike=agent.get("recover_on_spike"),
                                      spike_factor=agent.get("spike_factor"))
            elif peer_name(job["method"]) is not None:
                from ganno_lightning.agents.peers import with_peer

                with_peer(module, peer_name(job["method"]), job["steps"])  # brings its own callback if it needs one
            else:
                with_schedule(module, job["method"], job["steps"])
            # non-finite training or validation loss: stop; a zoo task logs no other validation metric
            # (an agent that recovers from spikes is not stopped on one: it rolls the run back itself)
            curve = LearningCurve("val_loss", check_finite=not (ganno is not None and ganno.recover_on_spike),
                                  strict=False)
            callbacks = [curve, *([ganno] if ganno is not None else [])]  # the curve first: it stops a diverged run
            with tempfile.TemporaryDirectory(prefix="ganno_eval_") as root, warnings.catch_warnings():
                # Advice and deprecations from Lightning's internals, identical for every run; a fresh
                # `catch_warnings` per run would otherwise print them again each time.
                warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
                warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
                warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
                # tiny models: faster on CPU than paying for transfers
                trainer = short_run_trainer(job["steps"], job["val_every"], root, callbacks, accelerator="cpu")
                trainer.fit(module)
            result["steps_done"] = int(trainer.global_step)
            result["curve"] = _scored(curve.curve)
            if curve.diverged:
                result.update(status="diverged", reason=curve.reason)
            elif not result["curve"] or result["curve"][-1][0] != job["steps"]:
                result.update(reason=f"no validation at the last step {job['steps']} (curve: {result['curve'][-2:]})")
            else:
                result.update(status="ok", final_val_loss=result["curve"][-1][1])
                accuracy = trainer.callback_metrics.get("val_acc")  # from the last validation, if logged
                result["final_val_acc"] = float(accuracy) if accuracy is not None else _accuracy(module)
        except Exception as err:  # one broken run must not stop the evaluation; the reason is kept
            result.update(status="failed", reason=f"{type(err).__name__}: {err}"[:500])
            if curve is not None:
                result["curve"] = _scored(curve.curve)
    if ganno is not None and ganno.schedule is not None:
        result["schedule"] = ganno.schedule.state_dict()
    if ganno is not None and ganno.recover_on_spike:
        result["rollbacks"] = ganno.rollbacks
    if ganno is not None and ganno.lr_search_result is not None:
        result["lr_search"] = {"factor": ganno.lr_search_result.factor, "steps": ganno.lr_search.steps,
                               "scores": {f"{f:g}": score for f, score in ganno.lr_search_result.scores.items()}}
    if result["status"] != "ok":
        result["final_val_loss"] = math.inf  # a diverged or failed run counts as a loss for its method
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _scored(curve: List[Tuple[int, float]]) -> List[List[float]]:
    """``[step, val_loss]`` points with a non-finite loss as ``inf``: a diverged point counts as a loss."""
    return [[step, value if math.isfinite(value) else math.inf] for step, value in curve]


@lru_cache(maxsize=4)
def _initial_val_loss(module) -> Optional[float]:
    """The validation loss before training (the scale that paired comparisons' floor is set from)."""
    from ganno_lightning.envs.tasks import ZooModule

    return module.validation_loss() if isinstance(module, ZooModule) else None


@torch.no_grad()
def _accuracy(module) -> Optional[float]:
    """Argmax accuracy on the validation loader for classifiers (integer targets), else ``None``.

    The zoo's classifiers log only ``val_loss``; accuracy is measured here on the final weights.
    Targets below 0 (``ignore_index`` positions of the sequence task) are skipped.
    """
    was_training = module.training
    module.eval()
    correct = total = 0
    try:
        for batch in module.val_dataloader():
            x, y = batch[0], batch[1]
            if y.is_floating_point():
                return None  # regression
            logits = module(x)
            if logits.shape[:-1] != y.shape:
                return None
            keep = y >= 0
            correct += int((logits.argmax(-1)[keep] == y[keep]).sum())
            total += int(keep.sum())
    except (TypeError, ValueError, IndexError, NotImplementedError):
        return None  # not a (x, y) classifier this function understands
    finally:
        module.train(was_training)
    return correct / total if total else None
