"""Run by test_ddp.py: a 2-process CPU DDP fit with GANNOCallback; each rank dumps what it saw."""

import json
import os
import sys

import lightning as L
from helpers import NaNLossWindow, RecordingAgent, TinyRegressor

from ganno_lightning import GANNOAgent, GANNOCallback

def fit_with_ddp_spawn(out: str) -> None:
    """The shipped agent's callback, pickled into two spawned processes (its generator's state travels as bytes)."""
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=4, logger=False,
                        callbacks=[GANNOCallback()], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(TinyRegressor(batch_size=4))
    for rank in (0, 1):  # the spawned processes' own state stays in them: the fit's end state is what shows here
        with open(f"{out}/seen{rank}.json", "w") as f:
            json.dump({"status": trainer.state.status.value}, f)


if __name__ == "__main__":
    out = sys.argv[1]
    if sys.argv[2:] == ["spawn"]:
        fit_with_ddp_spawn(out)
        sys.exit(0)
    # rank 1 alone reports NaN losses on steps 2-5 (and with "recover", both ranks roll back on them)
    nan_on_rank_one = sys.argv[2] in ("nan-on-rank-1", "recover") if sys.argv[2:] else False
    # #18's options: a decision at step 0 from a probe (its backward runs through DDP) and a cosine prior
    options = dict(decision_steps=[0, 1], prior="cosine") if sys.argv[2:] == ["act-early"] else {}
    if sys.argv[2:] == ["lr-search"]:  # trials on every rank's own batches, scores averaged over ranks
        options = dict(lr_search={"steps": 3, "factors": [1, 3, 10], "held_batches": 1})
    if sys.argv[2:] == ["recover"]:
        options = dict(recover_on_spike=True)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    # with act-early, also the LR probe: its trial update and forwards run on every rank, its losses are averaged
    features = "lr_probe" if "decision_steps" in options else None
    agent = RecordingAgent(GANNOAgent.create(interval=2, seed=0, feature_names=features))
    # sampled actions with a different seed per rank: only the broadcast makes them agree
    callback = GANNOCallback(agent, exploration="random", seed=rank, save_dir=f"{out}/rank{rank}", **options)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, callbacks=[callback],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(NaNLossWindow(2, 6, rank=1, batch_size=4) if nan_on_rank_one else TinyRegressor(batch_size=4))
    with open(f"{out}/seen{rank}.json", "w") as f:
        json.dump({"actions": callback.schedule.actions, "lrs": callback.schedule.lrs,
                   "observations": [o.tolist() for o in agent.observations],
                   "params": [p.detach().sum().item() for p in trainer.lightning_module.parameters()],
                   "rollbacks": callback.rollbacks,
                   "lr_search": None if callback.lr_search_result is None else
                   {"factor": callback.lr_search_result.factor,
                    "scores": {f"{k:g}": v for k, v in callback.lr_search_result.scores.items()}}}, f)
