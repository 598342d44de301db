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
_LAZY = {
    "RuleSearch": "ganno_lightning.nos.search",
    "SearchConfig": "ganno_lightning.nos.search",
    "SearchSpace": "ganno_lightning.nos.controller",
    "RuleController": "ganno_lightning.nos.controller",
    "ControllerPPO": "ganno_lightning.nos.controller",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "ControllerPPO",
    "NAMED_RULES",
    "NonFiniteUpdateError",
    "Rule",
    "RuleOptimizer",
    "RuleController",
    "RuleSearch",
    "RuleSearchCallback",
    "RuleSyntaxError",
    "SearchConfig",
    "SearchSpace",
    "UnknownNameError",
    "addsign",
    "linear_cosine_decay",
    "parse_rule",
    "powersign",
    "with_linear_cosine_decay",
]
