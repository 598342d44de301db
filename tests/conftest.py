"""Shared test setup: W&B never reaches the network, and every run writes to a temporary dir."""

import os
import sys

import pytest


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    os.makedirs(tmp_path / "wandb", exist_ok=True)
    yield
    # W&B keeps process-wide settings from the first `wandb.init`; a later test would inherit the
    # previous test's (since-deleted) directories and mode. Start every test from a clean slate.
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
