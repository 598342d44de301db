"""The observation contract: feature names and layer kinds (the action set is in ``actions.py``).

This module is the one source of truth for what an agent sees. The environment, the callback and
the agent checkpoint all read these tuples; an agent file records the list it was trained on and
is refused if it differs from :data:`FEATURE_NAMES`.
"""

from __future__ import annotations

from torch import nn


#: Bumped whenever a feature's meaning changes; part of the agent checkpoint's compatibility check.
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

FEATURE_NAMES: tuple[str, ...] = LOCAL_FEATURES + GLOBAL_FEATURES
NUM_FEATURES = len(FEATURE_NAMES)

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
