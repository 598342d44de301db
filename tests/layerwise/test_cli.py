"""GANNOCallback configured from a LightningCLI YAML file (needs the `cli` extra: jsonargparse[signatures])."""

import pytest
from helpers import TinyRegressor, depth_agent
from lightning.pytorch.cli import LightningCLI

from ganno_lightning import GANNOCallback

CONFIG = """
trainer:
  accelerator: cpu
  max_steps: 8
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: ganno_lightning.GANNOCallback
      init_args:
        agent: {agent}
        interval: 2
        exploration: mode
        scale_bounds: [0.25, 4.0]
        groups: ["net.*"]
        save_dir: {save_dir}
model:
  lr: 0.05
"""


def test_the_callback_is_configured_from_a_lightning_cli_yaml(tmp_path):
    agent = depth_agent(4).save(tmp_path / "agent.pt")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(agent=agent, save_dir=tmp_path / "schedule"))
    with pytest.warns(UserWarning, match="`interval=2` differs from the 4 steps"):
        cli = LightningCLI(TinyRegressor, run=False, args=["--config", str(config)], save_config_callback=None)
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, GANNOCallback))
    assert (callback.agent.interval, callback.interval, callback.exploration, callback.scale_bounds,
            callback.groups) == (4, 2, "mode", (0.25, 4.0), ["net.*"])

    cli.trainer.fit(cli.model)
    # one agent for both layers ("net.*"), at depth 0: it doubles its scale up to the bound
    assert callback.schedule.steps == [0, 2, 4, 6, 8]
    assert callback.schedule.lrs_of("net.*") == pytest.approx([0.05, 0.1, 0.2, 0.2, 0.2])
    assert (tmp_path / "schedule" / "ganno_schedule.csv").is_file()


def test_the_timing_options_come_from_a_lightning_cli_yaml(tmp_path):
    agent = depth_agent(4).save(tmp_path / "agent.pt")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(agent=agent, save_dir=tmp_path / "schedule").replace(
        "interval: 2", "interval: 4\n        decision_steps: [0, 2]\n        prior: cosine"))
    cli = LightningCLI(TinyRegressor, run=False, args=["--config", str(config)], save_config_callback=None)
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, GANNOCallback))
    assert (callback.decision_steps, callback.prior) == ((0, 2), "cosine")
    cli.trainer.fit(cli.model)
    assert callback.schedule.steps == [0, 2, 4, 8]
