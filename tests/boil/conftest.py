"""Every BOIL test runs against the stand-in core (tests/boil/boil_fakes.py), single-threaded."""

import boil_fakes
import pytest
import torch


@pytest.fixture(autouse=True)
def fake_core(monkeypatch):
    boil_fakes.FakeBOILCore.instances.clear()
    boil_fakes.install(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield boil_fakes.FakeBOILCore
    torch.set_num_threads(threads)
