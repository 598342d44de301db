"""ganno-lightning: learned per-layer learning-rate control for PyTorch Lightning."""

from ganno_lightning.agent import DEFAULT_AGENT_PATH, AgentCheckpointError, GANNOAgent
from ganno_lightning.callback import GANNOCallback
from ganno_lightning.controller import LayerwiseController
from ganno_lightning.features import DEFAULT_ACTION_MULTIPLIERS, FEATURE_NAMES, LAYER_KINDS
from ganno_lightning.lr_control import LayerwiseLR
from ganno_lightning.nos import RuleOptimizer, RuleSearchCallback, addsign, powersign
from ganno_lightning.observer import LayerObserver
from ganno_lightning.partition import LayerGroup, LayerPartition
from ganno_lightning.pbt import PBTCallback
from ganno_lightning.policy import LayerPolicyNet, ObservationNormalizer
from ganno_lightning.schedule import LRSchedule

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ACTION_MULTIPLIERS",
    "DEFAULT_AGENT_PATH",
    "FEATURE_NAMES",
    "LAYER_KINDS",
    "AgentCheckpointError",
    "GANNOAgent",
    "GANNOCallback",
    "LRSchedule",
    "LayerGroup",
    "LayerObserver",
    "LayerPartition",
    "LayerPolicyNet",
    "LayerwiseController",
    "LayerwiseLR",
    "ObservationNormalizer",
    "PBTCallback",
    "RuleOptimizer",
    "RuleSearchCallback",
    "addsign",
    "powersign",
]
