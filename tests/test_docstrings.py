"""The examples in the docstrings run as written."""

import doctest
import importlib

import pytest
import torch
from torch import nn

LAYERWISE = ["actions", "features", "partition", "lr_control", "observer", "policy", "agent", "schedule", "controller",
             "decisions", "prior"]
MODULES = [f"layerwise.{name}" for name in LAYERWISE] + ["config", "files", "rng", "lr_schedules", "examples.digits",
                                                         "tuning.space", "tuning.grid", "boil.observations",
                                                         "examples.tuning_tasks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"ganno_lightning.{name}")
    globs = {**vars(module), "torch": torch, "nn": nn}
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
