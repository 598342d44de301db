"""The shipped default agent decides exactly as it did when its committed evaluation was run.

New options (decision steps, LR prior, wider action sets, identity init) all default to off; these
numbers were recorded before they existed, so the defaults must leave the bundled agent's
decisions bit for bit unchanged.
"""

import pytest
import torch
from helpers import TinyRegressor, trainer

from ganno_lightning import GANNOCallback
from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH

pytestmark = pytest.mark.skipif(not DEFAULT_AGENT_PATH.is_file(), reason="no default agent ships")

STEPS = [0, 4, 8, 12, 16, 20, 24, 28, 32]
SCALES = {
    "mean": [[1.0, 1.0], [1.0987743529488119, 1.15664784110095], [1.4140275928646453, 1.5715732764878656],
             [2.1466278244652175, 2.4842330504626386], [2.320111186351721, 2.887988212840305],
             [2.4893974773678664, 3.4604525801466934], [2.189804671985966, 3.194835204397373],
             [2.008985650741738, 3.005968577637743], [1.880148738053832, 2.870164767890987]],
    "mode": [[1.0, 1.0], [2.0, 2.0], [2.0, 4.0], [4.0, 8.0], [2.0, 4.0], [1.0, 2.0], [1.0, 2.0], [2.0, 4.0],
             [2.8284271247461903, 4.0]],
}


@pytest.mark.parametrize("exploration", ["mean", "mode"])
def test_the_default_agents_decisions_are_unchanged(exploration):
    torch.manual_seed(0)
    model = TinyRegressor(optimizer="adam", lr=0.01)
    callback = GANNOCallback(exploration=exploration, interval=4)
    trainer(max_epochs=4, callbacks=[callback]).fit(model)
    assert callback.schedule.steps == STEPS
    # recorded on CPU with this repository's pinned torch; exact where the float arithmetic is the same
    torch.testing.assert_close(torch.tensor(callback.schedule.scales, dtype=torch.float64),
                               torch.tensor(SCALES[exploration], dtype=torch.float64), rtol=1e-12, atol=0)
