"""The update-rule language of Neural Optimizer Search (Bello et al., 2017).

A rule is the direction of one optimizer step: the optimizer applies ``w <- w - lr * rule``, so the
rule ``g`` is plain SGD and PowerSign is ``mul(exp(mul(sign_g, sign_m)), g)``. The paper's form
``b(u1(op1), u2(op2))`` is one level of this language; any nesting depth is allowed.

Grammar (function-call syntax only, so the text maps one to one onto the tree)::

    expr     := call | operand | number
    call     := NAME "(" expr ("," expr)* ")"
    operand  := NAME                 one of OPERANDS
    number   := decimal literal      e.g. 2, 0.5, 1e-3, -1

The parser is a hand-written tokenizer plus recursive descent. It never calls ``eval``/``exec``;
every failure is a :class:`RuleSyntaxError` carrying the offending position.

Example::

    from ganno_lightning.nos.dsl import parse_rule

    rule = parse_rule("mul(exp(mul(sign_g, sign_m)), g)")
    print(rule)                    # mul(exp(mul(sign_g, sign_m)), g)
    print(sorted(rule.operands))   # ['g', 'sign_g', 'sign_m']
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "OPERANDS",
    "UNARY_FUNCTIONS",
    "BINARY_FUNCTIONS",
    "DECAY_OPERANDS",
    "Operand",
    "Number",
    "Call",
    "Node",
    "Rule",
    "RuleSyntaxError",
    "UnknownNameError",
    "parse_rule",
]

#: Operands and what they mean. ``m``, ``v``, ``y`` are exponential moving averages of g, g^2, g^3
#: with decays ``beta1``, ``beta2``, ``beta3``; the ``_hat`` forms are bias corrected as in Adam.
OPERANDS: dict[str, str] = {
    "g": "gradient",
    "g2": "gradient squared",
    "g3": "gradient cubed",
    "m": "running average of g (beta1), no bias correction",
    "v": "running average of g^2 (beta2), no bias correction",
    "y": "running average of g^3 (beta3), no bias correction",
    "m_hat": "bias-corrected running average of g",
    "v_hat": "bias-corrected running average of g^2",
    "y_hat": "bias-corrected running average of g^3",
    "sign_g": "sign(g)",
    "sign_m": "sign(m)",
    "noise": "Gaussian noise with variance 0.01 / (1 + t)^0.55",
    "w": "the weights (scale them, e.g. mul(0.001, w), for the paper's 10^-3 w operand)",
    "adam": "Adam update m_hat / (sqrt(v_hat) + eps)",
    "rmsprop": "RMSProp update g / (sqrt(v_hat) + eps)",
    "ld": "linear decay 1 - t/T",
    "cd": "cyclical decay 0.5 * (1 + cos(2 pi n t/T))",
    "rd": "restart decay 0.5 * (1 + cos(pi * ((n t) mod T) / T))",
    "lcd": "linear cosine decay (1 - t/T) * 0.5 * (1 + cos(2 pi n t/T)) + 0.001",
}

#: Operands that depend on the step count t and the horizon T (the optimizer's ``decay_steps``).
DECAY_OPERANDS = frozenset({"ld", "cd", "rd", "lcd"})

#: Unary functions: name -> number of extra numeric-literal parameters.
UNARY_FUNCTIONS: dict[str, int] = {
    "id": 0,  # identity
    "neg": 0,  # -x
    "exp": 0,  # e^x
    "log": 0,  # log|x|
    "sqrt": 0,  # sqrt|x|
    "sign": 0,  # sign(x)
    "clip": 1,  # clip(x, c): clamp to [-c, c]
    "drop": 1,  # drop(x, p): dropout with drop probability p
}

#: Binary functions. ``div(x, y)`` is x / (y + delta); ``keep(x, y)`` is x (keep-left).
BINARY_FUNCTIONS: frozenset[str] = frozenset({"add", "sub", "mul", "div", "pow", "keep"})

#: Deep nesting is never a useful rule; the cap keeps fuzzed input from hitting RecursionError.
MAX_DEPTH = 64


class RuleSyntaxError(ValueError):
    """A rule text that does not parse. ``position`` is the 0-based character offset."""

    def __init__(self, message: str, text: str, position: int) -> None:
        self.text = text
        self.position = position
        self.reason = message
        caret = " " * position + "^"
        super().__init__(f"{message} at position {position}:\n  {text}\n  {caret}")


class UnknownNameError(RuleSyntaxError):
    """An operand or function name that the language does not define."""


@dataclass(frozen=True)
class Operand:
    name: str
    position: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Number:
    value: float
    position: int = field(default=0, compare=False)

    def __str__(self) -> str:
        # repr round-trips floats exactly; integral values print without ".0" for readability
        if self.value == int(self.value) and abs(self.value) < 1e15:
            return str(int(self.value))
        return repr(self.value)


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple["Node", ...]
    position: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{self.function}({', '.join(str(a) for a in self.args)})"


Node = Union[Operand, Number, Call]


@dataclass(frozen=True)
class Rule:
    """A parsed rule: the tree plus facts the optimizer needs about it.

    Attributes:
        text: the canonical text (``str(rule)``); parsing it gives an equal tree.
        root: the expression tree.
        operands: the operand names used.
        functions: the function names used.
    """

    root: Node
    operands: frozenset[str]
    functions: frozenset[str]

    @property
    def text(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return self.text

    @property
    def running_averages(self) -> frozenset[str]:
        """The moving-average buffers (``m``, ``v``, ``y``) the rule needs; nothing else is stored."""
        need = set()
        for op in self.operands:
            if op in ("m", "m_hat", "sign_m", "adam"):
                need.add("m")
            if op in ("v", "v_hat", "adam", "rmsprop"):
                need.add("v")
            if op in ("y", "y_hat"):
                need.add("y")
        return frozenset(need)

    @property
    def uses_decay(self) -> bool:
        return bool(self.operands & DECAY_OPERANDS)


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------
_NAME, _NUMBER, _LPAREN, _RPAREN, _COMMA, _END = "name", "number", "(", ")", ",", "end"


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    position: int


def _scan_number(text: str, i: int) -> int:
    """Return the end offset of the decimal literal starting at ``i`` (sign already consumed)."""
    n = len(text)
    start = i
    while i < n and text[i].isascii() and text[i].isdigit():
        i += 1
    if i < n and text[i] == ".":
        i += 1
        while i < n and text[i].isascii() and text[i].isdigit():
            i += 1
    if i == start or text[start:i] == ".":
        raise RuleSyntaxError("expected a number", text, start)
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        k = j
        while k < n and text[k].isascii() and text[k].isdigit():
            k += 1
        if k == j:
            raise RuleSyntaxError("malformed exponent in number", text, i)
        i = k
    return i


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c in "(),":
            tokens.append(_Token(c, c, i))
            i += 1
        elif (c.isascii() and c.isalpha()) or c == "_":
            j = i + 1
            while j < n and ((text[j].isascii() and text[j].isalnum()) or text[j] == "_"):
                j += 1
            tokens.append(_Token(_NAME, text[i:j], i))
            i = j
        elif (c.isascii() and c.isdigit()) or c == "." or c in "+-":
            j = i + 1 if c in "+-" else i
            end = _scan_number(text, j)
            tokens.append(_Token(_NUMBER, text[i:end], i))
            i = end
        else:
            raise RuleSyntaxError(f"unexpected character {c!r}", text, i)
    tokens.append(_Token(_END, "", n))
    return tokens


# ---------------------------------------------------------------------------------------------
# recursive-descent parser
# ---------------------------------------------------------------------------------------------
def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=3)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self, kind: str, what: str) -> _Token:
        tok = self.peek()
        if tok.kind != kind:
            found = "end of rule" if tok.kind == _END else repr(tok.text)
            raise RuleSyntaxError(f"expected {what}, found {found}", self.text, tok.position)
        self.i += 1
        return tok

    def parse(self) -> Node:
        if self.peek().kind == _END:
            raise RuleSyntaxError("empty rule", self.text, 0)
        node = self.expr(0)
        tok = self.peek()
        if tok.kind != _END:
            raise RuleSyntaxError(f"unexpected {tok.text!r} after a complete rule", self.text, tok.position)
        return node

    def expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise RuleSyntaxError(f"rule nests deeper than {MAX_DEPTH} levels", self.text, self.peek().position)
        tok = self.peek()
        if tok.kind == _NUMBER:
            self.i += 1
            value = float(tok.text)
            if not math.isfinite(value):
                raise RuleSyntaxError(f"number {tok.text} is not finite", self.text, tok.position)
            return Number(value, tok.position)
        if tok.kind != _NAME:
            found = "end of rule" if tok.kind == _END else repr(tok.text)
            raise RuleSyntaxError(f"expected an operand, number or function, found {found}", self.text, tok.position)
        self.i += 1
        if self.peek().kind != _LPAREN:
            if tok.text in OPERANDS:
                return Operand(tok.text, tok.position)
            if tok.text in UNARY_FUNCTIONS or tok.text in BINARY_FUNCTIONS:
                raise RuleSyntaxError(f"function {tok.text!r} needs arguments in parentheses", self.text, self.peek().position)
            raise UnknownNameError(
                f"unknown operand {tok.text!r}.{_suggest(tok.text, OPERANDS)} Known operands: {', '.join(OPERANDS)}",
                self.text,
                tok.position,
            )
        return self.call(tok, depth)

    def call(self, name: _Token, depth: int) -> Node:
        fn = name.text
        if fn not in UNARY_FUNCTIONS and fn not in BINARY_FUNCTIONS:
            known = sorted(UNARY_FUNCTIONS) + sorted(BINARY_FUNCTIONS)
            hint = " (operands take no arguments)" if fn in OPERANDS else _suggest(fn, known)
            raise UnknownNameError(
                f"unknown function {fn!r}{hint}. Known functions: {', '.join(known)}", self.text, name.position
            )
        self.take(_LPAREN, "'('")
        args = [self.expr(depth + 1)]
        while self.peek().kind == _COMMA:
            self.i += 1
            args.append(self.expr(depth + 1))
        close = self.take(_RPAREN, "',' or ')'")
        if fn in BINARY_FUNCTIONS:
            if len(args) != 2:
                raise RuleSyntaxError(f"{fn}() takes 2 arguments, got {len(args)}", self.text, name.position)
        else:
            n_params = UNARY_FUNCTIONS[fn]
            if len(args) != 1 + n_params:
                usage = f"{fn}(x, c)" if n_params else f"{fn}(x)"
                raise RuleSyntaxError(
                    f"{fn}() takes {1 + n_params} argument(s) ({usage}), got {len(args)}", self.text, name.position
                )
            for param in args[1:]:
                if not isinstance(param, Number):
                    raise RuleSyntaxError(
                        f"the parameter of {fn}() must be a number literal", self.text, param.position
                    )
            if fn == "clip" and args[1].value <= 0:
                raise RuleSyntaxError("clip(x, c) needs c > 0", self.text, args[1].position)
            if fn == "drop" and not 0.0 <= args[1].value < 1.0:
                raise RuleSyntaxError("drop(x, p) needs 0 <= p < 1", self.text, args[1].position)
        del close
        return Call(fn, tuple(args), name.position)


def _collect(node: Node, operands: set, functions: set) -> None:
    if isinstance(node, Operand):
        operands.add(node.name)
    elif isinstance(node, Call):
        functions.add(node.function)
        for a in node.args:
            _collect(a, operands, functions)


def parse_rule(text: str) -> Rule:
    """Parse rule text into a :class:`Rule`.

    Args:
        text: the rule, e.g. ``"mul(add(1, mul(sign_g, sign_m)), g)"`` (AddSign).

    Returns:
        The parsed rule; ``str(rule)`` is its canonical text.

    Raises:
        TypeError: ``text`` is not a string.
        RuleSyntaxError: the text does not parse (``UnknownNameError`` for unknown names); the
            message points at the offending position.

    Example::

        from ganno_lightning.nos.dsl import parse_rule
        parse_rule("div(m_hat, sqrt(v_hat))")   # Adam with delta = eps
    """
    if not isinstance(text, str):
        raise TypeError(f"`rule` must be a string, got {type(text).__name__}: {text!r}.")
    root = _Parser(text).parse()
    operands: set = set()
    functions: set = set()
    _collect(root, operands, functions)
    return Rule(root, frozenset(operands), frozenset(functions))
