"""Neural Optimizer Search (Bello et al., 2017) for PyTorch Lightning.

An update-rule language (:mod:`~ganno_lightning.nos.dsl`), an optimizer that runs any rule
(:class:`RuleOptimizer`), the discovered rules PowerSign and AddSign (:mod:`~ganno_lightning.nos.rules`),
and a PPO-trained controller that searches rules on your own LightningModule.
"""

from ganno_lightning._lazy import lazy_exports
from ganno_lightning.nos.callback import RuleSearchCallback
from ganno_lightning.nos.dsl import Rule, RuleSyntaxError, UnknownNameError, parse_rule
from ganno_lightning.nos.optimizer import NonFiniteUpdateError, RuleOptimizer
from ganno_lightning.nos.rules import NAMED_RULES, addsign, linear_cosine_decay, powersign, with_linear_cosine_decay

# the search pulls in TorchRL (slow to import); load it only when asked for
__getattr__, __dir__, _LAZY_NAMES = lazy_exports(__name__, {
    ".search": ["RuleSearch", "SearchConfig"],
    ".controller": ["ControllerPPO", "RuleController", "SearchSpace"],
})

__all__ = sorted([
    *_LAZY_NAMES, "NAMED_RULES", "NonFiniteUpdateError", "Rule", "RuleOptimizer", "RuleSearchCallback",
    "RuleSyntaxError", "UnknownNameError", "addsign", "linear_cosine_decay", "parse_rule", "powersign",
    "with_linear_cosine_decay",
])
