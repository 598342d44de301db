"""Shared test setup: W&B never reaches the network, and every run writes to a temporary dir."""

import os
import sys

import pytest
import torch


def pytest_configure(config):
    # Under pytest-xdist (the README's `-n 2`) every worker is a process of its own: one torch thread
    # each, or two workers' parallel kernels spin-wait for each other's cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


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



@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest single-threaded: on a shared 2-core machine torch's parallel kernels
    spin-wait for busy cores and make each op far slower. Restores the caller's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
