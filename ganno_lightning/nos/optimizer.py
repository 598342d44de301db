"""``RuleOptimizer``: a ``torch.optim.Optimizer`` that executes any update rule of the NOS language.

The rule is evaluated once per step over *all* parameters of a bucket at a time with
``torch._foreach_*`` kernels (a bucket is the parameters of one group that share device, dtype and
step count), so the cost is a fixed number of fused kernels per tree node, never a Python loop over
elements. Only the running averages the rule reads (``m``, ``v``, ``y``) are allocated.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from ganno_lightning.nos.dsl import Call, Node, Number, Operand, Rule
from ganno_lightning.nos.rules import resolve_rule

__all__ = ["RuleOptimizer", "NonFiniteUpdateError", "decay_value"]

Value = Union[float, list]  # a python scalar (same for every element) or one tensor per parameter


class NonFiniteUpdateError(FloatingPointError):
    """The rule produced NaN or inf for some parameter; the weights were left unchanged."""


def decay_value(name: str, step: int, total: int, periods: float) -> float:
    """Value of a decay operand (``ld``, ``cd``, ``rd``, ``lcd``) at ``step`` of ``total``.

    Follows Bello et al. (2017), Sec. 5; ``lcd`` is TensorFlow's ``linear_cosine_decay`` with
    alpha=0, beta=0.001. Steps past ``total`` hold the final value.
    """
    t = min(step, total)
    frac = t / total
    if name == "ld":
        return 1.0 - frac
    if name == "cd":
        return 0.5 * (1.0 + math.cos(2.0 * math.pi * periods * frac))
    if name == "rd":
        return 0.5 * (1.0 + math.cos(math.pi * ((periods * t) % total) / total))
    if name == "lcd":
        return (1.0 - frac) * 0.5 * (1.0 + math.cos(2.0 * math.pi * periods * frac)) + 0.001
    raise ValueError(f"`name` must be one of ld, cd, rd, lcd, got {name!r}.")


def _scalar(fn: Callable, *xs: float) -> float:
    # float64 tensors give IEEE semantics (inf, nan) where python math would raise
    return float(fn(*(torch.tensor(x, dtype=torch.float64) for x in xs)))


class _Bucket:
    """Everything one rule evaluation needs, with lazily computed, cached operands."""

    def __init__(self, opt: "RuleOptimizer", group: dict, params: list, grads: list, states: list, step: int):
        self.group, self.params, self.grads, self.states, self.step = group, params, grads, states, step
        self.cache: dict[str, Value] = {}
        self.uses: dict[str, int] = {}
        self.lent: set[str] = set()  # operands whose cached value was handed out without ownership

    def like(self, value: float) -> list:
        return [torch.full_like(p, value) for p in self.params]

    def operand(self, name: str) -> Value:
        if name not in self.cache:
            self.cache[name] = self._compute(name)
        return self.cache[name]

    def _bias(self, beta: float) -> float:
        return 1.0 - beta**self.step

    def _compute(self, name: str) -> Value:
        g, group = self.grads, self.group
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        if name == "g":
            return g
        if name == "g2":
            return torch._foreach_mul(g, g)
        if name == "g3":
            return torch._foreach_mul(self.operand("g2"), g)
        if name in ("m", "v", "y"):
            key = {"m": "exp_avg", "v": "exp_avg_sq", "y": "exp_avg_cube"}[name]
            return [s[key] for s in self.states]
        if name == "m_hat":
            return torch._foreach_div(self.operand("m"), self._bias(beta1))
        if name == "v_hat":
            return torch._foreach_div(self.operand("v"), self._bias(beta2))
        if name == "y_hat":
            return torch._foreach_div(self.operand("y"), self._bias(group["beta3"]))
        if name == "sign_g":
            return torch._foreach_sign(g)
        if name == "sign_m":
            return torch._foreach_sign(self.operand("m"))
        if name == "noise":
            std = math.sqrt(0.01 / (1.0 + self.step) ** 0.55)
            return [torch.randn_like(p) * std for p in self.params]
        if name == "w":
            return [p.detach() for p in self.params]
        if name == "adam":
            # the same kernel order as torch.optim.Adam (foreach): sqrt(v)/sqrt(bc2) + eps, then divide
            denom = torch._foreach_sqrt(self.operand("v"))
            torch._foreach_div_(denom, math.sqrt(self._bias(beta2)))
            torch._foreach_add_(denom, eps)
            return torch._foreach_div(torch._foreach_div(self.operand("m"), self._bias(beta1)), denom)
        if name == "rmsprop":
            denom = torch._foreach_sqrt(self.operand("v_hat"))
            torch._foreach_add_(denom, eps)
            return torch._foreach_div(g, denom)
        if name in ("ld", "cd", "rd", "lcd"):
            return decay_value(name, self.step, group["decay_steps"], group["decay_periods"])
        raise AssertionError(f"operand {name!r} has no implementation")  # parser rejects unknown names

    # ----------------------------------------------------------------------------------------
    # Evaluation returns (value, owned). An owned list is a fresh intermediate that no one else
    # reads, so the next node may overwrite it in place: on CPU a fresh multi-megabyte buffer costs
    # several times the arithmetic (page faults), so in-place reuse is most of the speed.
    # An operand read more than once is handed out shared for its earlier uses; its last use must
    # then stay shared too, since an earlier reader (the left side of a pending binary node, say)
    # may still hold the very same buffers: ``add(v_hat, neg(v_hat))`` would otherwise negate both.
    def count_uses(self, node: Node) -> None:
        if isinstance(node, Operand):
            self.uses[node.name] = self.uses.get(node.name, 0) + 1
        elif isinstance(node, Call):
            for a in node.args[:1] if node.function == "keep" else node.args:
                self.count_uses(a)

    def evaluate(self, node: Node) -> tuple:
        if isinstance(node, Number):
            return node.value, False
        if isinstance(node, Operand):
            name = node.name
            value = self.operand(name)
            self.uses[name] -= 1
            # foreach kernels return tuples, so test "not a scalar" rather than "is a list"
            if name in _OWNABLE and self.uses[name] == 0 and name not in self.lent and not isinstance(value, float):
                del self.cache[name]  # handed over; an internal use later recomputes it
                return value, True
            self.lent.add(name)
            return value, False
        assert isinstance(node, Call)
        fn = node.function
        if fn == "keep":  # the right operand is never needed
            return self.evaluate(node.args[0])
        x = self.evaluate(node.args[0])
        if len(node.args) == 2 and fn not in ("clip", "drop"):
            return self.binary(fn, x, self.evaluate(node.args[1]))
        param = node.args[1].value if len(node.args) == 2 else None
        return self.unary(fn, x, param)

    def unary(self, fn: str, xo: tuple, param: Optional[float]) -> tuple:
        x, owned = xo
        if isinstance(x, float) and fn != "drop":
            ops = {
                "id": lambda a: a,
                "neg": torch.neg,
                "exp": torch.exp,
                "log": lambda a: torch.log(a.abs()),
                "sqrt": lambda a: torch.sqrt(a.abs()),
                "sign": torch.sign,
                "clip": lambda a: a.clamp(-param, param),
            }
            return _scalar(ops[fn], x), False
        if fn == "id":
            return x, owned
        if fn == "drop":
            if isinstance(x, float):
                x = self.like(x)
            # one mask per tensor: a loop over parameters, not elements
            return [torch.nn.functional.dropout(t, p=param, training=True) for t in x], True
        if fn in ("log", "sqrt"):  # both act on |x|
            if owned:
                torch._foreach_abs_(x)
            else:
                x, owned = torch._foreach_abs(x), True
        table = {
            "neg": (torch._foreach_neg, torch._foreach_neg_),
            "exp": (torch._foreach_exp, torch._foreach_exp_),
            "log": (torch._foreach_log, torch._foreach_log_),
            "sqrt": (torch._foreach_sqrt, torch._foreach_sqrt_),
            "sign": (torch._foreach_sign, torch._foreach_sign_),
        }
        if fn in table:
            out_of_place, in_place = table[fn]
            if owned:
                in_place(x)
                return x, True
            return out_of_place(x), True
        if fn == "clip":
            if owned:
                torch._foreach_clamp_max_(x, param)
            else:
                x = torch._foreach_clamp_max(x, param)
            torch._foreach_clamp_min_(x, -param)
            return x, True
        raise AssertionError(f"unary function {fn!r} has no implementation")

    def binary(self, fn: str, xo: tuple, yo: tuple) -> tuple:
        (x, x_owned), (y, y_owned) = xo, yo
        delta = self.group["eps"]
        xs, ys = isinstance(x, float), isinstance(y, float)
        if xs and ys:
            ops = {
                "add": torch.add,
                "sub": torch.sub,
                "mul": torch.mul,
                "div": lambda a, b: a / (b + delta),
                "pow": torch.pow,
            }
            return _scalar(ops[fn], x, y), False
        if fn in ("add", "mul"):
            # commutative: write into whichever side is owned
            if xs or (not x_owned and y_owned):
                x, y, x_owned = y, x, y_owned
            op, op_ = (torch._foreach_add, torch._foreach_add_) if fn == "add" else (torch._foreach_mul, torch._foreach_mul_)
            if x_owned:
                op_(x, y)
                return x, True
            return op(x, y), True
        if fn == "sub":
            if xs:  # c - y = (-y) + c
                out = y if y_owned else torch._foreach_neg(y)
                if y_owned:
                    torch._foreach_neg_(out)
                torch._foreach_add_(out, x)
                return out, True
            if x_owned:
                torch._foreach_sub_(x, y)
                return x, True
            return torch._foreach_sub(x, y), True
        if fn == "div":
            if ys:
                if x_owned:
                    torch._foreach_div_(x, y + delta)
                    return x, True
                return torch._foreach_div(x, y + delta), True
            if y_owned:
                torch._foreach_add_(y, delta)
                denom = y
            else:
                denom = torch._foreach_add(y, delta)
            if xs:
                torch._foreach_reciprocal_(denom)
                torch._foreach_mul_(denom, x)
                return denom, True
            if x_owned:
                torch._foreach_div_(x, denom)
                return x, True
            return torch._foreach_div(x, denom), True
        if fn == "pow":
            if not xs and x_owned:
                torch._foreach_pow_(x, y)
                return x, True
            return torch._foreach_pow(x, y), True
        raise AssertionError(f"binary function {fn!r} has no implementation")


def _real(value: object) -> Optional[float]:
    """``value`` as a float if it is a real number (an int, a float or a one-element tensor), else None.

    A string or a bool is not a number here: ``float("0.1")`` would accept a value a config loader
    left unparsed, and ``True`` would pass as 1.0.
    """
    if isinstance(value, Tensor):
        return float(value) if value.numel() == 1 and not value.is_complex() else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


#: Operands computed fresh for each step, so the only reader may overwrite them.
_OWNABLE = frozenset({"g2", "g3", "m_hat", "v_hat", "y_hat", "sign_g", "sign_m", "noise", "adam", "rmsprop"})


class RuleOptimizer(Optimizer):
    """Optimizer that applies ``w <- w - lr * rule`` for a rule of the NOS language.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer. A group may set
            its own ``rule`` and hyperparameters.
        rule: a named rule from :data:`ganno_lightning.nos.rules.NAMED_RULES` (``"powersign"``,
            ``"addsign_ld"``, ...), rule text (``"mul(exp(mul(sign_g, sign_m)), g)"``) or a parsed
            :class:`~ganno_lightning.nos.dsl.Rule`.
        lr: learning rate, a positive float.
        betas: decays of the running averages ``m`` and ``v``.
        beta3: decay of the running average ``y`` of g^3.
        eps: the ``eps`` of the ``adam``/``rmsprop`` operands and the delta of ``div(x, y) = x/(y+delta)``.
        decay_steps: horizon T of the decay operands ``ld``, ``cd``, ``rd``, ``lcd``; required when
            the rule uses one.
        decay_periods: number of periods n of ``cd``, ``rd`` and ``lcd``.
        check_finite: after computing the update, check it is finite (one host sync per step) and
            raise :class:`NonFiniteUpdateError` instead of writing NaN into the weights. Set False
            for the last bit of speed once a rule is known to be safe.

    Raises:
        ValueError: a hyperparameter is out of range, or a decay rule has no ``decay_steps``.
        RuleSyntaxError: the rule text does not parse.

    Example::

        import torch
        from ganno_lightning.nos import RuleOptimizer

        model = torch.nn.Linear(4, 1)
        opt = RuleOptimizer(model.parameters(), rule="powersign", lr=1e-2)
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        opt.step()
    """

    def __init__(
        self,
        params: Iterable,
        rule: Union[str, Rule] = "powersign",
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = 0.999,
        eps: float = 1e-8,
        decay_steps: Optional[int] = None,
        decay_periods: float = 0.5,
        check_finite: bool = True,
    ) -> None:
        parsed = resolve_rule(rule)
        defaults = dict(
            rule=parsed.text,
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (tuple, list)) else betas,  # a scalar: an error naming `betas`
            beta3=beta3,
            eps=eps,
            decay_steps=decay_steps,
            decay_periods=decay_periods,
        )
        self.check_finite = bool(check_finite)
        self._compiled: dict[str, Rule] = {}
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate_group(group)

    def add_param_group(self, param_group: dict) -> None:
        if "rule" in param_group:
            param_group["rule"] = resolve_rule(param_group["rule"]).text
        super().add_param_group(param_group)
        if hasattr(self, "_compiled"):
            self._validate_group(self.param_groups[-1])

    def _validate_group(self, group: dict) -> None:
        lr = _real(group["lr"])
        if lr is None or not lr > 0:
            raise ValueError(f"`lr` must be a positive float, got {group['lr']!r}.")
        betas = group["betas"]
        values = [_real(b) for b in betas] if isinstance(betas, (tuple, list)) else []
        if len(values) != 2 or not all(b is not None and 0.0 <= b < 1.0 for b in values):
            raise ValueError(f"`betas` must be two floats in [0, 1), got {betas!r}, e.g. betas=(0.9, 0.999).")
        beta3 = _real(group["beta3"])
        if beta3 is None or not 0.0 <= beta3 < 1.0:
            raise ValueError(f"`beta3` must be a float in [0, 1), got {group['beta3']!r}, e.g. beta3=0.999.")
        eps = _real(group["eps"])
        if eps is None or not eps >= 0.0:
            raise ValueError(f"`eps` must be a non-negative float, got {group['eps']!r}, e.g. eps=1e-8.")
        rule = self._rule(group)
        steps = group["decay_steps"]
        if rule.uses_decay and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
            used = ", ".join(sorted(rule.operands & {"ld", "cd", "rd", "lcd"}))
            raise ValueError(
                f"`decay_steps` must be a positive int when the rule uses the decay operand(s) {used}, "
                f"got {steps!r}. Pass the number of optimizer steps of the run, e.g. decay_steps=1000."
            )
        periods = _real(group["decay_periods"])
        if periods is None or not periods > 0:
            raise ValueError(
                f"`decay_periods` must be a positive float, got {group['decay_periods']!r}. Pass the number of "
                "periods of the cyclic decay operands cd, rd and lcd, e.g. decay_periods=0.5."
            )

    def _rule(self, group: dict) -> Rule:
        text = group["rule"]
        if text not in self._compiled:
            self._compiled[text] = resolve_rule(text)
        return self._compiled[text]

    def rule(self, group_index: int = 0) -> Rule:
        """The parsed rule of param group ``group_index``."""
        return self._rule(self.param_groups[group_index])

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rule = self._rule(group)
            needs = rule.running_averages
            buckets: dict[tuple, list] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RuleOptimizer does not support sparse gradients.")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                    if "m" in needs:
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if "v" in needs:
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if "y" in needs:
                        state["exp_avg_cube"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                buckets[(p.device, p.dtype, int(state["step"].item()))].append(p)
            for (_, _, step), params in buckets.items():
                self._step_bucket(group, rule, params, step)
        return loss

    def _step_bucket(self, group: dict, rule: Rule, params: list, step: int) -> None:
        grads = [p.grad for p in params]
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        needs = rule.running_averages
        # update the averages first so m, v, y at step t include g_t (as in Adam)
        if "m" in needs:
            torch._foreach_lerp_([s["exp_avg"] for s in states], grads, 1 - beta1)
        if "v" in needs:
            v = [s["exp_avg_sq"] for s in states]
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
        if "y" in needs:
            g3 = torch._foreach_mul(torch._foreach_mul(grads, grads), grads)
            torch._foreach_lerp_([s["exp_avg_cube"] for s in states], g3, 1 - group["beta3"])
        bucket = _Bucket(self, group, params, grads, states, step)
        bucket.count_uses(rule.root)
        update, _ = bucket.evaluate(rule.root)
        lr = float(group["lr"])
        if isinstance(update, float):
            update = bucket.like(update)
        if self.check_finite:
            # a 2-norm is inf/nan iff some element is (or the update is beyond ~1e19, diverged anyway);
            # it is far cheaper on CPU than the inf-norm
            norms = torch._foreach_norm(update)
            if not bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
                raise NonFiniteUpdateError(
                    f"rule `{rule.text}` produced a non-finite update at step {step}; the weights were "
                    "left unchanged. Lower `lr`, guard divisions and logs (e.g. clip(x, 10)), or treat "
                    "the rule as diverged."
                )
        torch._foreach_add_(params, update, alpha=-lr)
