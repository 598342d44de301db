"""Named update rules: PowerSign, AddSign and their decay variants (Bello et al., 2017), plus the
classic optimizers written in the rule language, the linear cosine learning-rate decay, and
:func:`resolve_rule`, which turns a name or rule text into a parsed rule.

PowerSign: ``alpha^(f(t) * sign(g) * sign(m)) * g``; AddSign: ``(alpha + f(t) * sign(g) * sign(m)) * g``,
with ``f`` one of 1 (no decay), ``ld`` (linear), ``cd`` (cyclical) or ``rd`` (restart). The decay
variants need ``decay_steps`` on the optimizer.

Example::

    import torch
    from ganno_lightning.nos import RuleOptimizer, powersign

    model = torch.nn.Linear(4, 1)
    opt = RuleOptimizer(model.parameters(), rule=powersign(alpha=2.0, decay="cd"), lr=1e-2, decay_steps=500)
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Callable, Optional, Union

from ganno_lightning.nos.dsl import OPERANDS, Rule, UnknownNameError, parse_rule

__all__ = [
    "NAMED_RULES",
    "resolve_rule",
    "powersign",
    "addsign",
    "with_linear_cosine_decay",
    "linear_cosine_decay",
]

_DECAYS = (None, "ld", "cd", "rd")


def _check(alpha: float, decay: Optional[str], name: str) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"`alpha` must be a finite float, got {alpha!r}.")
    if name == "powersign" and alpha <= 0:
        raise ValueError(f"`alpha` must be positive for PowerSign, got {alpha!r}. The paper uses e or 2.")
    if decay not in _DECAYS:
        raise ValueError(f"`decay` must be one of None, 'ld', 'cd', 'rd', got {decay!r}.")


def _number(x: float) -> str:
    return str(parse_rule(repr(float(x))))  # canonical literal text


def powersign(alpha: float = math.e, decay: Optional[str] = None) -> str:
    """PowerSign rule text: ``alpha^(f(t) sign(g) sign(m)) * g``.

    Args:
        alpha: base, positive (the paper uses e; 2 works similarly).
        decay: None, ``"ld"``, ``"cd"`` or ``"rd"`` for the decay variants.

    Example::

        from ganno_lightning.nos.rules import powersign
        powersign()            # 'mul(exp(mul(sign_g, sign_m)), g)'
        powersign(decay="ld")  # 'mul(exp(mul(ld, mul(sign_g, sign_m))), g)'
    """
    _check(alpha, decay, "powersign")
    agree = "mul(sign_g, sign_m)" if decay is None else f"mul({decay}, mul(sign_g, sign_m))"
    scale = f"exp({agree})" if alpha == math.e else f"pow({_number(alpha)}, {agree})"
    return f"mul({scale}, g)"


def addsign(alpha: float = 1.0, decay: Optional[str] = None) -> str:
    """AddSign rule text: ``(alpha + f(t) sign(g) sign(m)) * g``.

    Args:
        alpha: offset (the paper uses 1).
        decay: None, ``"ld"``, ``"cd"`` or ``"rd"`` for the decay variants.

    Example::

        from ganno_lightning.nos.rules import addsign
        addsign()   # 'mul(add(1, mul(sign_g, sign_m)), g)'
    """
    _check(alpha, decay, "addsign")
    agree = "mul(sign_g, sign_m)" if decay is None else f"mul({decay}, mul(sign_g, sign_m))"
    return f"mul(add({_number(alpha)}, {agree}), g)"


def with_linear_cosine_decay(rule: str) -> str:
    """Multiply any rule by the linear cosine decay ``lcd`` (needs ``decay_steps``)."""
    return f"mul(lcd, {resolve_rule(rule).text})"


def linear_cosine_decay(
    total_steps: int, num_periods: float = 0.5, alpha: float = 0.0, beta: float = 0.001
) -> Callable[[int], float]:
    """Linear cosine decay as a multiplier for ``torch.optim.lr_scheduler.LambdaLR``.

    ``((alpha + (1 - t/T)) * 0.5 * (1 + cos(2 pi n t/T)) + beta)``, the schedule Bello et al. found
    alongside PowerSign/AddSign (TensorFlow's ``linear_cosine_decay``).

    Example::

        import torch
        from ganno_lightning.nos.rules import linear_cosine_decay

        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_cosine_decay(total_steps=1000))
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(f"`total_steps` must be a positive int, got {total_steps!r}.")
    if not num_periods > 0:
        raise ValueError(f"`num_periods` must be a positive float, got {num_periods!r}.")

    def factor(step: int) -> float:
        t = min(step, total_steps)
        linear = (total_steps - t) / total_steps
        cosine = 0.5 * (1.0 + math.cos(2.0 * math.pi * num_periods * t / total_steps))
        return (alpha + linear) * cosine + beta

    return factor


#: Rule name -> rule text. Classic optimizers are included so a search can start from them and so
#: the language can be checked against torch.optim (with the matching betas; see the tests).
NAMED_RULES: dict[str, str] = {
    "sgd": "g",
    # torch's momentum buffer is sum(mu^k g) = m / (1 - mu) with beta1 = mu
    "sgd_momentum": "div(m, 0.1)",
    # a name that is also an operand must name that operand: rule text "adam" or "rmsprop" (a lone
    # operand, as Rule.text and the controller write it) has to mean the operand, never another rule
    "adam": "adam",  # m_hat / (sqrt(v_hat) + eps), torch.optim.Adam's kernel order
    "rmsprop": "rmsprop",  # g / (sqrt(v_hat) + eps), bias corrected
    # torch's RMSprop has no bias correction: use betas=(_, alpha)
    "rmsprop_torch": "div(g, sqrt(v))",
    "powersign": powersign(),
    "powersign_ld": powersign(decay="ld"),
    "powersign_cd": powersign(decay="cd"),
    "powersign_rd": powersign(decay="rd"),
    "addsign": addsign(),
    "addsign_ld": addsign(decay="ld"),
    "addsign_cd": addsign(decay="cd"),
    "addsign_rd": addsign(decay="rd"),
    "sgd_lcd": "mul(lcd, g)",
    "powersign_lcd": f"mul(lcd, {powersign()})",
    "addsign_lcd": f"mul(lcd, {addsign()})",
}


_BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def resolve_rule(rule: Union[str, Rule]) -> Rule:
    """Turn a named rule (``"powersign"``), rule text or a parsed :class:`Rule` into a :class:`Rule`.

    Rule text always means what it parses to: a name is looked up in ``NAMED_RULES`` only when it is
    not also an operand, so the canonical text of any rule (e.g. ``"rmsprop"``, the lone operand, as
    the controller or ``Rule.text`` writes it) resolves back to that same rule.
    """
    if isinstance(rule, Rule):
        return rule
    if not isinstance(rule, str):
        raise TypeError(
            f"`rule` must be a rule name, rule text or Rule, got {type(rule).__name__}: {rule!r}. "
            "Try rule='powersign' or rule='mul(exp(mul(sign_g, sign_m)), g)'."
        )
    name = rule.strip()
    if name in OPERANDS:  # the operand itself: a named rule must never shadow rule text
        return parse_rule(rule)
    if name in NAMED_RULES:
        return parse_rule(NAMED_RULES[name])
    if _BARE_NAME.fullmatch(name):  # meant as a rule's name (a misspelt one), not as rule text
        close = difflib.get_close_matches(name, [*NAMED_RULES, *OPERANDS], n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown rule {name!r}: neither a named rule nor an operand.{hint} Named rules: "
            f"{', '.join(NAMED_RULES)}. Operands (each a rule by itself): {', '.join(OPERANDS)}. "
            f"Or write rule text, e.g. '{powersign()}'",
            rule,
            rule.index(name),
        )
    return parse_rule(rule)
