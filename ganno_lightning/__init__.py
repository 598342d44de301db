"""ganno-lightning: learned per-layer learning-rate control for PyTorch Lightning.

Public names are imported on first use (PEP 562), so ``import ganno_lightning.pbt.store`` or the
Lightning-free core does not pay for importing Lightning, and ``import ganno_lightning`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganno_lightning._lazy import lazy_exports

__version__ = "0.1.0"

#: Module -> the public names it defines (the one source of truth for the exports).
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".layerwise.actions": ["DEFAULT_ACTION_MULTIPLIERS"],
    ".layerwise.agent": ["AgentCheckpointError", "DEFAULT_AGENT_PATH", "GANNOAgent"],
    ".layerwise.callback": ["GANNOCallback"],
    ".layerwise.controller": ["LayerwiseController"],
    ".layerwise.features": ["FEATURE_NAMES", "LAYER_KINDS"],
    ".layerwise.lr_control": ["LayerwiseLR"],
    ".layerwise.observer": ["LayerObserver"],
    ".layerwise.partition": ["LayerGroup", "LayerPartition"],
    ".layerwise.policy": ["LayerPolicyNet", "ObservationNormalizer", "RecurrentLayerPolicyNet"],
    ".layerwise.schedule": ["LRSchedule"],
    ".nos": ["RuleOptimizer", "RuleSearchCallback", "addsign", "powersign"],
    ".pbt": ["PBTCallback"],
})

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from ganno_lightning.layerwise.actions import DEFAULT_ACTION_MULTIPLIERS
    from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH, AgentCheckpointError, GANNOAgent
    from ganno_lightning.layerwise.callback import GANNOCallback
    from ganno_lightning.layerwise.controller import LayerwiseController
    from ganno_lightning.layerwise.features import FEATURE_NAMES, LAYER_KINDS
    from ganno_lightning.layerwise.lr_control import LayerwiseLR
    from ganno_lightning.layerwise.observer import LayerObserver
    from ganno_lightning.layerwise.partition import LayerGroup, LayerPartition
    from ganno_lightning.layerwise.policy import LayerPolicyNet, ObservationNormalizer, RecurrentLayerPolicyNet
    from ganno_lightning.layerwise.schedule import LRSchedule
    from ganno_lightning.nos import RuleOptimizer, RuleSearchCallback, addsign, powersign
    from ganno_lightning.pbt import PBTCallback
