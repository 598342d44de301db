"""Named rules, their variants and the linear cosine decay schedule."""

import ast
import math
from pathlib import Path

import pytest
import torch

import ganno_lightning.nos.rules
from ganno_lightning.nos import (
    NAMED_RULES,
    RuleOptimizer,
    UnknownNameError,
    addsign,
    linear_cosine_decay,
    parse_rule,
    powersign,
    with_linear_cosine_decay,
)
from ganno_lightning.nos.rules import resolve_rule


def test_named_rules_parse_and_decay_variants_use_their_operand():
    for name, text in NAMED_RULES.items():
        rule = parse_rule(text)
        assert str(rule) == text
        for decay in ("ld", "cd", "rd", "lcd"):
            assert (decay in rule.operands) == name.endswith("_" + decay)


def test_powersign_alpha_two_uses_pow():
    assert powersign(alpha=2.0) == "mul(pow(2, mul(sign_g, sign_m)), g)"
    assert addsign(alpha=0.5, decay="rd") == "mul(add(0.5, mul(rd, mul(sign_g, sign_m))), g)"
    p = torch.nn.Parameter(torch.zeros(2))
    opt = RuleOptimizer([p], rule=powersign(alpha=2.0), lr=1.0)
    p.grad = torch.tensor([1.0, -1.0])
    opt.step()  # signs agree at step 1: 2^1 * g
    torch.testing.assert_close(p.detach(), torch.tensor([-2.0, 2.0]))


def test_linear_cosine_decay_matches_tensorflow_definition():
    f = linear_cosine_decay(100)
    assert f(0) == pytest.approx(1.001)
    assert f(50) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.5)) + 0.001)
    assert f(100) == pytest.approx(0.001) and f(500) == pytest.approx(0.001)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    for _ in range(100):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.001)


def test_with_linear_cosine_decay_wraps_any_rule():
    assert with_linear_cosine_decay("addsign") == "mul(lcd, mul(add(1, mul(sign_g, sign_m)), g))"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: powersign(alpha=-1.0), r"`alpha` must be positive for PowerSign, got -1.0"),
        (lambda: powersign(decay="exp"), r"`decay` must be one of None, 'ld', 'cd', 'rd', got 'exp'"),
        (lambda: addsign(alpha=float("nan")), r"`alpha` must be a finite float, got nan"),
        (lambda: linear_cosine_decay(0), r"`total_steps` must be a positive int, got 0"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rules_stand_below_the_optimizer_in_the_import_graph():
    # optimizer imports rules (for resolve_rule), never the reverse: no cycle hidden in a function
    tree = ast.parse(Path(ganno_lightning.nos.rules.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name.startswith("ganno_lightning")} - {"ganno_lightning.nos.dsl"}


def test_a_misspelt_rule_name_suggests_the_named_rule_and_lists_them():
    params = torch.nn.Linear(2, 1).parameters()
    with pytest.raises(UnknownNameError, match=r"unknown rule 'powersine'.*Did you mean 'powersign'") as caught:
        RuleOptimizer(params, rule="powersine")
    assert f"Named rules: {', '.join(NAMED_RULES)}." in str(caught.value)
    with pytest.raises(UnknownNameError, match=r"Did you mean 'sign_g'"):  # a misspelt operand is found too
        resolve_rule(" sgn_g ")
    # rule text is still parsed as rule text: the misspelt operand inside a call is the DSL's error
    with pytest.raises(UnknownNameError, match=r"unknown operand 'powersine'"):
        resolve_rule("mul(powersine, g)")
