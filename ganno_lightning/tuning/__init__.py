"""What every hyperparameter tuner shares: the search space, the setters that apply a value to a
running fit, and the rule that widens an LR grid whose best point sits at its edge.

Used by Population Based Training (``ganno_lightning.pbt``); a new tuner brings only its own
algorithm and Lightning glue. Names are imported lazily, so reading a search space does not import
torch.

Example::

    from ganno_lightning.tuning import parse_space, resolve_setters

    space = parse_space({"lr": {"low": 1e-4, "high": 0.1, "log": True}, "dropout": {"low": 0.0, "high": 0.5}})
    setters = resolve_setters(list(space), {"dropout": "module:dropout.p"})
"""

from ganno_lightning._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".space": ["Hyperparameter", "clip_values", "parse_space", "sample_values"],
    ".grid": ["factors_past_the_edge", "grid_step"],
    ".setters": ["BUILTIN_SETTERS", "CallbackAttribute", "FunctionSetter", "HyperparameterSetter",
                 "ModuleAttribute", "OptimizerHyperparameter", "resolve_setters"],
})
