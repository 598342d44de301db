"""Every BOIL test runs the real core (BoTorch GP, acquisition), single-threaded.

``suggest_calls`` records what the glue hands the core (observations, pending trials, spent share) and
lets each call through to the real ``BOILCore.suggest``: a spy, not a stand-in.
"""

import pytest
import torch

from ganno_lightning.boil.core import BOILCore

@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def suggest_calls(monkeypatch):
    """A list that gets ``{"core", "observations", "pending", "spent_fraction", "suggestion"}`` per call."""
    calls = []
    real = BOILCore.suggest

    def recording(self, observations, pending=(), spent_fraction=0.0):
        call = {"core": self, "observations": list(observations), "pending": list(pending),
                "spent_fraction": spent_fraction}
        call["suggestion"] = real(self, call["observations"], call["pending"], spent_fraction)
        calls.append(call)
        return call["suggestion"]

    monkeypatch.setattr(BOILCore, "suggest", recording)
    return calls
