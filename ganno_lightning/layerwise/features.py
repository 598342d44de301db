"""The observation contract: feature names and layer kinds (the action set is in ``actions.py``).

This module is the one source of truth for what an agent sees. The environment, the callback and
the agent checkpoint all read these tuples. The observer computes every feature of
:data:`ALL_FEATURE_NAMES`; an agent observes a named set of them (:data:`FEATURE_SETS`, by default
:data:`FEATURE_NAMES`), records the list in its file and is refused by a release that does not
compute every name on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: Bumped whenever a feature's meaning changes; part of the agent checkpoint's compatibility check.
#: New features get new names (checked by name), so adding one leaves it as it is.
FEATURES_VERSION = 2

#: Layer kinds, in one-hot order.
LAYER_KINDS: tuple[str, ...] = ("linear", "conv", "norm", "embedding", "recurrent", "other")

#: Features describing one layer (one agent).
LOCAL_FEATURES: tuple[str, ...] = (
    "log_scale",  # log of the agent's LR multiplier
    "log_lr",  # log of the effective learning rate (scheduler LR x scale)
    "log_weight_rms",
    "log_grad_rms",  # interval mean over sampled optimizer steps
    "log_update_ratio",  # log ||w_now - w_interval_start|| / ||w_interval_start||
    "grad_consistency",  # ||sum g||^2 / (k * sum ||g||^2): 1 = same direction every step, ~1/k = noise
    "depth",  # i / (L - 1)
    *(f"kind_{kind}" for kind in LAYER_KINDS),
    "log_param_count",
)

#: Features describing the whole training run, appended to every agent's row.
GLOBAL_FEATURES: tuple[str, ...] = (
    "progress",  # optimizer steps / total steps, 0 when the total is unknown
    "progress_unknown",  # 1 when the total number of steps is unknown
    "log_loss",  # log of the smoothed (EMA) interval-mean training loss
    "log_loss_ratio",  # log(L_interval / L_previous_interval)
    "loss_volatility",  # std / mean of the per-batch losses in the interval
    "log_val_loss_ratio",  # log(validation loss / smoothed training loss), 0 without validation
    "has_val_loss",
    # Network-wide means of two local features. The actor's mean pooling sees these too, but
    # normalised with the per-layer statistics; as run-wide features they get their own, narrower
    # ones. Agents trained with them were level or ahead on every target at the two seeds compared
    # with and without them (README, "The default agent"); two seeds cannot tell whether the
    # scaling or the draw did it.
    "net_log_grad_rms",
    "net_log_update_ratio",
)

#: The default set (the shipped agent observes these and the `hypergradient` extras).
FEATURE_NAMES: tuple[str, ...] = LOCAL_FEATURES + GLOBAL_FEATURES
NUM_FEATURES = len(FEATURE_NAMES)

#: Scale-free features after the default set (issue #18), in the observer's row after it.
EXTRA_FEATURES: tuple[str, ...] = (
    # Per layer, cos(previous step's update, this step's gradient), pooled over the interval's gradient
    # samples: the sign of the hypergradient d loss / d log LR (Baydin et al. 2018), for any optimizer.
    # Above 0: the gradient now points back along the last update (it overshot: LR too high); below
    # 0: still along it (LR could be larger). 0 before any update.
    "update_grad_cos",
    # Run-wide: log(smoothed loss / the first interval's mean loss), the run's own progress whatever
    # the loss's units.
    "log_loss_vs_initial",
)

#: What the LR probe multiplies the first update by (see :data:`LR_PROBE_FEATURES`).
LR_PROBE_MULTIPLIERS: tuple[float, ...] = (0.125, 1.0, 8.0)

#: Run-wide, measured once by the step-0 probe and kept for the whole run: the relative change of the
#: probe batch's training loss after a trial first update, scaled by each of :data:`LR_PROBE_MULTIPLIERS`
#: (``(L_m - L_0) / |L_0|``, clipped to [-1, 3]; 3 when the loss is not finite). The update is taken at
#: the LRs in force before the first decision (the user's, times a prior's value at step 0). How the
#: loss answers one step at 1/8x, 1x and 8x that LR says where it sits on this task: a loss that keeps
#: falling at 8x the step is on a too-low LR, one that rises at 1x on a too-high one. No other feature
#: shows it before the LR has trained for an interval. 0 in runs without a step-0 probe (and where the
#: probe's loss was 0 or not finite). The env and the callback refuse these features without a
#: decision at step 0.
LR_PROBE_FEATURES: tuple[str, ...] = ("lr_probe_change_eighth", "lr_probe_change_1x", "lr_probe_change_8x")

#: Run-wide: log of the run's total optimizer steps, 0 when unknown (as ``progress``). The best LR
#: level depends on the run's length (at 3000 steps it sits up to 160x below the 300-step one on some
#: families): an agent meta-trained on runs of several lengths can read the length here instead of
#: inferring it from how fast ``progress`` moves.
RUN_LENGTH_FEATURES: tuple[str, ...] = ("log_total_steps",)

#: Every feature the observer computes, in the order of its rows.
ALL_FEATURE_NAMES: tuple[str, ...] = FEATURE_NAMES + EXTRA_FEATURES + LR_PROBE_FEATURES + RUN_LENGTH_FEATURES

#: Features whose values carry a task's absolute scale: an agent that reads them can recall the
#: LRs and losses of its meta-training tasks instead of reading the run (issue #18, item 3).
ABSOLUTE_SCALE_FEATURES: tuple[str, ...] = ("log_lr", "log_loss")

_HYPERGRADIENT = FEATURE_NAMES + EXTRA_FEATURES

#: The named feature sets an agent can observe (``env.features`` of a meta-training config):
#: ``scale_free`` is ``hypergradient`` without :data:`ABSOLUTE_SCALE_FEATURES` (the LR is still
#: seen relative to the user's, as ``log_scale``, and the loss relative to the run's start);
#: ``lr_probe`` is ``hypergradient`` with :data:`LR_PROBE_FEATURES` (useful with a step-0 decision);
#: ``run_length`` is ``hypergradient`` with :data:`RUN_LENGTH_FEATURES` (useful with ``env.long_run_prob``).
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "default": FEATURE_NAMES,
    "hypergradient": _HYPERGRADIENT,
    "scale_free": tuple(n for n in _HYPERGRADIENT if n not in ABSOLUTE_SCALE_FEATURES),
    "lr_probe": _HYPERGRADIENT + LR_PROBE_FEATURES,
    "run_length": _HYPERGRADIENT + RUN_LENGTH_FEATURES,
}


def resolve_feature_names(value: str | Sequence[str] | None, name: str = "features") -> tuple[str, ...]:
    """The feature names an agent observes: a set's name from :data:`FEATURE_SETS` or a list of names.

    Raises:
        ValueError: naming ``name``, for an unknown set or feature name, a repeated name or an empty list.

    Example::

        >>> len(resolve_feature_names("hypergradient")) - len(resolve_feature_names(None))
        2
        >>> "log_lr" in resolve_feature_names("scale_free"), "log_scale" in resolve_feature_names("scale_free")
        (False, True)
    """
    if value is None:
        return FEATURE_NAMES
    if isinstance(value, str):
        if value not in FEATURE_SETS:
            raise ValueError(f"`{name}` must be one of {sorted(FEATURE_SETS)} or a list of feature names, "
                             f"got {value!r}.")
        return FEATURE_SETS[value]
    names = tuple(value)
    unknown = [n for n in names if n not in ALL_FEATURE_NAMES]
    if not names or unknown or len(set(names)) != len(names):
        problem = f"unknown names {unknown}" if unknown else "an empty list" if not names else "repeated names"
        raise ValueError(f"`{name}` has {problem} ({list(names)}); use a set of {sorted(FEATURE_SETS)} or names "
                         f"from ganno_lightning.layerwise.features.ALL_FEATURE_NAMES.")
    return names

def check_lr_probe_decisions(feature_names: Sequence[str], decision_steps: Sequence[int], name: str) -> None:
    """Refuse :data:`LR_PROBE_FEATURES` without a decision at step 0, where the probe that measures them runs.

    Raises:
        ValueError: naming ``name`` (the decision steps' argument) and its value.

    Example::

        >>> check_lr_probe_decisions(FEATURE_SETS["lr_probe"], [0, 5, 12], "decision_steps")
        >>> check_lr_probe_decisions(FEATURE_SETS["lr_probe"], [5, 12], "decision_steps")
        Traceback (most recent call last):
        ...
        ValueError: `decision_steps` must include step 0 for the LR probe features ...
    """
    if any(f in LR_PROBE_FEATURES for f in feature_names) and 0 not in decision_steps:
        raise ValueError(f"`{name}` must include step 0 for the LR probe features {list(LR_PROBE_FEATURES)} (the "
                         f"probe before the first update measures them), got {list(decision_steps)}; use e.g. "
                         "'front_loaded' or [0, 5, 12], or features without them.")


#: Features are clipped to this magnitude so that no extreme value reaches a policy.
FEATURE_CLIP = 50.0

_KIND_TYPES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("linear", (nn.Linear, nn.Bilinear)),
    ("conv", (nn.modules.conv._ConvNd,)),
    (
        "norm",
        (
            nn.modules.batchnorm._NormBase,
            nn.LayerNorm,
            nn.GroupNorm,
            nn.LocalResponseNorm,
            *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
        ),
    ),
    ("embedding", (nn.Embedding, nn.EmbeddingBag)),
    ("recurrent", (nn.RNNBase, nn.RNNCellBase)),
)


def layer_kind(module: nn.Module) -> str:
    """Return the kind of ``module`` as one of :data:`LAYER_KINDS`.

    Example::

        >>> layer_kind(nn.Conv2d(1, 4, 3))
        'conv'
    """
    for kind, types in _KIND_TYPES:
        if isinstance(module, types):
            return kind
    return "other"
