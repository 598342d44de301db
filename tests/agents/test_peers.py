"""LR-free and adaptive peers: Adam-HD on a quadratic, the registry and ``with_peer``, schedule-free
train/eval modes in a real Trainer, and the peers in the evaluation end to end (real Lightning runs)."""

import doctest
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch import nn

from ganno_lightning.agents import evaluation as ev
from ganno_lightning.agents import peers as peers_module
from ganno_lightning.agents.peers import (
    HYPERGRAD_LR,
    LR_FREE_LR,
    PEERS,
    AdamHD,
    OptimizerModes,
    missing_packages,
    with_peer,
)
from ganno_lightning.envs.tasks import DigitsMLP
from ganno_lightning.trials.curve import LearningCurve

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "evaluate_smoke.yaml"
ALL = list(PEERS)
needs_extra = pytest.mark.skipif(bool(missing_packages(ALL)), reason='needs pip install "ganno-lightning[peers]"')
pytestmark = pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\)` is deprecated")


# -- Adam-HD --------------------------------------------------------------------------------------


def _quadratic_lrs(lr, steps=8, hypergrad_lr=HYPERGRAD_LR):
    """Adam-HD on f(w) = |w|^2 / 2 from w = 1: the LR after each step."""
    w = nn.Parameter(torch.ones(10))
    optimizer = AdamHD([w], lr=lr, hypergrad_lr=hypergrad_lr)
    lrs = []
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * w.square().sum()).backward()
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("hypergrad_lr", [HYPERGRAD_LR, 1e-3])
def test_adam_hd_raises_a_too_low_lr_and_lowers_a_too_high_one(hypergrad_lr):
    # Too low: every step moves w the same way toward 0, the gradient agrees with the last step.
    low = _quadratic_lrs(1e-3, hypergrad_lr=hypergrad_lr)
    assert low[0] == 1e-3  # no previous step to compare with on the first one
    assert all(b > a for a, b in zip(low, low[1:]))
    # Too high: the first step jumps from w = 1 to w = -2, the gradient then opposes the last step.
    high = _quadratic_lrs(3.0, hypergrad_lr=hypergrad_lr)
    assert high[1] < 3.0 and high[-1] < 3.0


def test_adam_hd_is_adam_without_hypergradient_and_checks_its_argument():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 2), nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    hd, adam = AdamHD(a.parameters(), lr=0.01, hypergrad_lr=0.0), torch.optim.Adam(b.parameters(), lr=0.01)
    x = torch.randn(16, 4)
    for _ in range(5):
        for model, optimizer in ((a, hd), (b, adam)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert AdamHD(a.parameters()).param_groups[0]["hypergrad_lr"] == 1e-7  # the paper's beta for Adam-HD
    with pytest.raises(ValueError, match=r"`hypergrad_lr` must be a finite number >= 0, got -1"):
        AdamHD(a.parameters(), hypergrad_lr=-1)


# -- registry and with_peer -----------------------------------------------------------------------


class _DecayingMLP(DigitsMLP):
    """A zoo MLP whose optimizer sets weight decay, as AdamW tasks do."""

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.05)


def _tiny(cls=DigitsMLP, lr=0.01):
    return cls(depth=1, width=16, lr=lr, batch_size=32, optimizer="adam", seed=0)


@needs_extra
@pytest.mark.parametrize("name", ALL)
def test_every_peer_builds_over_the_modules_groups_at_its_lr_with_its_weight_decay(name):
    config = with_peer(_tiny(_DecayingMLP, lr=0.02), name, total_steps=50).configure_optimizers()
    group = config["optimizer"].param_groups[0]
    assert group["lr"] == (0.02 if PEERS[name].uses_lr else LR_FREE_LR)
    assert group["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in config["optimizer"].param_groups) == 4  # every parameter of the MLP
    scheduler = config.get("lr_scheduler")
    if name == "prodigy_cosine":
        assert scheduler["interval"] == "step" and scheduler["scheduler"].lr_lambdas[0](50) == 0.0
    else:
        assert scheduler is None


def _uninstall_extra(monkeypatch):
    for package in ("schedulefree", "prodigyopt", "dadaptation"):
        monkeypatch.setitem(sys.modules, package, None)  # importlib.util.find_spec then says: not installed


def test_with_peer_checks_its_arguments(monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown peer 'prodigi'; known peers: schedulefree_adamw, prodigy, "):
        with_peer(_tiny(), "prodigi", 10)
    with pytest.raises(ValueError, match=r"`total_steps` must be a positive int, got 0"):
        with_peer(_tiny(), "adam_hd", 0)
    model = with_peer(_tiny(), "adam_hd", 10)
    with pytest.raises(ValueError, match=r"already trains with the peer 'adam_hd'"):
        with_peer(model, "adam_hd", 10)
    _uninstall_extra(monkeypatch)
    with pytest.raises(ModuleNotFoundError, match=r"'prodigy' needs prodigyopt: pip install \"ganno-lightning\[peers\]\""):
        with_peer(_tiny(), "prodigy", 10)


# -- schedule-free modes in a real Trainer --------------------------------------------------------


class _ModeProbe(Callback):
    """Records the optimizer's mode at each training step and each validation, and the validation loss
    of the module evaluated by hand at validation end."""

    def __init__(self):
        self.train_steps, self.validations, self.checked = [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.train_steps.append(optimizer.param_groups[0]["train_mode"])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.validations.append(trainer.optimizers[0].param_groups[0]["train_mode"])

    def on_validation_end(self, trainer, pl_module):
        self.checked.append((float(trainer.callback_metrics["val_loss"]), _val_loss(pl_module)))


@torch.no_grad()
def _val_loss(module):
    was_training = module.training
    module.eval()
    x, y = next(iter(module.val_dataloader()))  # the validation set fits in one batch
    loss = float(module.loss([x, y]))
    module.train(was_training)
    return loss


def _trainer(steps, root, callbacks):
    return Trainer(max_steps=steps, val_check_interval=10, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=root, callbacks=callbacks)


@needs_extra
def test_schedule_free_fit_ends_in_eval_mode_after_unvalidated_steps(tmp_path):
    model = with_peer(_tiny(lr=0.01), "schedulefree_adamw", total_steps=15)
    trainer = _trainer(15, tmp_path, [])  # validation at step 10, then 5 training steps
    trainer.fit(model)
    assert trainer.optimizers[0].param_groups[0]["train_mode"] is False


@needs_extra
def test_schedule_free_trains_in_train_mode_and_is_scored_in_eval_mode(tmp_path):
    model = with_peer(_tiny(lr=0.01), "schedulefree_adamw", total_steps=30)
    assert [type(c) for c in model.configure_callbacks()] == [OptimizerModes]
    curve, probe = LearningCurve("val_loss"), _ModeProbe()
    trainer = _trainer(30, tmp_path, [curve, probe])
    trainer.fit(model)
    assert any(isinstance(c, OptimizerModes) for c in trainer.callbacks)  # attached by the module itself
    assert len(probe.train_steps) == 30 and all(probe.train_steps)
    assert probe.validations == [False, False, False]
    # At every validation the logged loss is the loss of the evaluated (averaged) weights.
    assert [step for step, _ in curve.curve] == [10, 20, 30]
    for (logged, by_hand), (_, recorded) in zip(probe.checked, curve.curve):
        assert logged == pytest.approx(by_hand, rel=1e-6) and recorded == logged
    # Fit ends in eval mode: the module holds the weights the final val loss was measured on ...
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["train_mode"] is False
    assert _val_loss(model) == pytest.approx(curve.curve[-1][1], rel=1e-6)
    # ... which are not the training iterate: scoring that one would give another loss.
    optimizer.train()
    assert _val_loss(model) != pytest.approx(curve.curve[-1][1], rel=1e-6)


# -- the evaluation -------------------------------------------------------------------------------


TINY = ["seeds=[0]", "steps=40", "val_every=20", "lr_grid=[1.0]", "init_lr_factors=[1.0,10.0]", "deeper=false",
        "schedules=[constant,cosine]", "wandb.enabled=false"]


def test_peers_config_is_checked(monkeypatch):
    assert list(ev.load_config(SMOKE).peers) == []  # none by default: existing evaluations are unchanged
    with pytest.raises(ValueError, match=r"`peers` has unknown peer\(s\) \['prodigi'\]; known: \['schedulefree_adamw', "):
        ev.load_config(SMOKE, ["peers=[prodigy,prodigi]"])
    with pytest.raises(ValueError, match=r"`peers` must be distinct, got \['adam_hd', 'adam_hd'\]"):
        ev.load_config(SMOKE, ["peers=[adam_hd,adam_hd]"])
    _uninstall_extra(monkeypatch)
    with pytest.raises(ValueError, match=r"need\(s\) the package\(s\) \['schedulefree', 'prodigyopt'\], not installed: "
                                         r"pip install \"ganno-lightning\[peers\]\""):
        ev.load_config(SMOKE, ["peers=[schedulefree_adamw,prodigy,prodigy_cosine,adam_hd]"])
    assert list(ev.load_config(SMOKE, ["peers=[adam_hd]"]).peers) == ["adam_hd"]  # written here: no extra needed


@needs_extra
def test_peer_runs_are_planned_per_condition_lr_or_once_when_lr_free():
    base = ev.plan_runs(ev.load_config(SMOKE, ["agent.path=x.pt"]))
    jobs = ev.plan_runs(ev.load_config(SMOKE, ["agent.path=x.pt", f"peers=[{','.join(ALL)}]"]))
    peer_jobs = [j for j in jobs if j["method"].startswith("peer:")]
    # the other runs, and their keys (so their logged runs stay reusable), are those of an evaluation without peers
    assert [(j["id"], j["key"]) for j in jobs if j not in peer_jobs] == [(j["id"], j["key"]) for j in base]
    # per seed: 2 peers with an LR x {x1, x10} + 3 LR-free once; deeper_x2: each peer once
    assert len(peer_jobs) == 2 * (2 * 2 + 3) + 2 * 5
    assert ev.run_id("mlp_digits#0", 0, "peer:prodigy", 1.0) in {j["id"] for j in peer_jobs}
    assert ev.run_id("mlp_digits#0", 0, "peer:prodigy", 10.0) not in {j["id"] for j in peer_jobs}
    assert ev.run_id("mlp_digits#0", 0, "peer:adam_hd", 10.0) in {j["id"] for j in peer_jobs}
    prodigy = next(j for j in peer_jobs if j["method"] == "peer:prodigy")
    assert prodigy["peer"]["package"].startswith("prodigyopt==")  # another version of the package: another key


@pytest.fixture(scope="module")
def with_peers(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers")
    argv = [str(SMOKE), *TINY, f"out_dir={out}", f"peers=[{','.join(ALL)}]"]
    return out, ev.main(argv), argv


@needs_extra
def test_smoke_evaluation_with_every_peer(with_peers):
    out, code, _ = with_peers
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    methods = ["agent", "constant@init", "cosine@init", "constant@tuned", "cosine@tuned", *(f"peer:{p}" for p in ALL)]
    assert all(list(rows) == methods for rows in results["summary"].values())
    peer_runs = [r for r in results["runs"] if r["method"].startswith("peer:")]
    assert len(peer_runs) == 2 * 2 + 3 and all(r["status"] == "ok" for r in peer_runs)
    assert all([s for s, _ in r["curve"]] == [20, 40] and math.isfinite(r["final_val_loss"]) for r in peer_runs)
    # LR-free peers: one run shared by both conditions; the others start from each condition's LR
    seeds = {c: results["comparisons"][c]["mlp_digits#0"]["seeds"]["0"]["methods"] for c in ("init_lr_x1", "init_lr_x10")}
    assert seeds["init_lr_x1"]["peer:prodigy"]["run"] == seeds["init_lr_x10"]["peer:prodigy"]["run"]
    assert seeds["init_lr_x1"]["peer:adam_hd"]["run"].endswith("|x1")
    assert seeds["init_lr_x10"]["peer:adam_hd"]["run"].endswith("|x10")
    report = (out / "report.md").read_text()
    assert report.startswith("# GANNO agent vs handcrafted LR schedules and LR-free peers")
    section = report.split("## init_lr_x10\n")[1]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert rows[1:1 + len(methods)] == methods  # the summary table
    header = next(line for line in section.splitlines() if line.startswith("| task |"))
    assert all(f"| peer:{p} |" in header for p in ALL)  # the per-task table
    assert "LR-free (lr=1 in every condition, so one run per task and seed): `prodigy`, `prodigy_cosine`" in report


@needs_extra
def test_peer_runs_are_reused_by_baselines_from(with_peers, tmp_path, capsys):
    out, _, argv = with_peers
    capsys.readouterr()
    assert ev.main([*argv[:-2], f"out_dir={tmp_path}", f"peers=[{','.join(ALL)}]", f"baselines_from=[{out}]"]) == 0
    printed = capsys.readouterr().out
    assert "copied 11 finished baseline runs" in printed  # 4 schedule runs and 7 peer runs; the 2 agent runs train
    original, reused = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path))
    assert reused["summary"] == original["summary"]


def test_docstring_examples():
    result = doctest.testmod(peers_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
