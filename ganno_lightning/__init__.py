"""ganno-lightning: learned per-layer learning-rate control for PyTorch Lightning.

Public names are imported on first use (PEP 562), so ``import ganno_lightning.pbt.store`` or the
Lightning-free core does not pay for importing Lightning, and ``import ganno_lightning`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganno_lightning._lazy import lazy_exports

__version__ = "0.1.0"

#: Public name -> the module that defines it (the one source of truth for the exports).
_EXPORTS = {
    "AgentCheckpointError": "ganno_lightning.layerwise.agent",
    "DEFAULT_AGENT_PATH": "ganno_lightning.layerwise.agent",
    "GANNOAgent": "ganno_lightning.layerwise.agent",
    "GANNOCallback": "ganno_lightning.layerwise.callback",
    "LayerwiseController": "ganno_lightning.layerwise.controller",
    "DEFAULT_ACTION_MULTIPLIERS": "ganno_lightning.layerwise.actions",
    "FEATURE_NAMES": "ganno_lightning.layerwise.features",
    "LAYER_KINDS": "ganno_lightning.layerwise.features",
    "LayerwiseLR": "ganno_lightning.layerwise.lr_control",
    "LayerObserver": "ganno_lightning.layerwise.observer",
    "LayerGroup": "ganno_lightning.layerwise.partition",
    "LayerPartition": "ganno_lightning.layerwise.partition",
    "LayerPolicyNet": "ganno_lightning.layerwise.policy",
    "ObservationNormalizer": "ganno_lightning.layerwise.policy",
    "RecurrentLayerPolicyNet": "ganno_lightning.layerwise.policy",
    "LRSchedule": "ganno_lightning.layerwise.schedule",
    "PBTCallback": "ganno_lightning.pbt",
    "RuleOptimizer": "ganno_lightning.nos",
    "RuleSearchCallback": "ganno_lightning.nos",
    "addsign": "ganno_lightning.nos",
    "powersign": "ganno_lightning.nos",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH, AgentCheckpointError, GANNOAgent
    from ganno_lightning.layerwise.callback import GANNOCallback
    from ganno_lightning.layerwise.controller import LayerwiseController
    from ganno_lightning.layerwise.actions import DEFAULT_ACTION_MULTIPLIERS
    from ganno_lightning.layerwise.features import FEATURE_NAMES, LAYER_KINDS
    from ganno_lightning.layerwise.lr_control import LayerwiseLR
    from ganno_lightning.nos import RuleOptimizer, RuleSearchCallback, addsign, powersign
    from ganno_lightning.layerwise.observer import LayerObserver
    from ganno_lightning.layerwise.partition import LayerGroup, LayerPartition
    from ganno_lightning.pbt import PBTCallback
    from ganno_lightning.layerwise.policy import LayerPolicyNet, ObservationNormalizer, RecurrentLayerPolicyNet
    from ganno_lightning.layerwise.schedule import LRSchedule
