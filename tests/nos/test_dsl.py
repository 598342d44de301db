"""Parser tests: the grammar, error positions, round trips and fuzzed input."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ganno_lightning.nos.dsl import (
    BINARY_FUNCTIONS,
    OPERANDS,
    UNARY_FUNCTIONS,
    Call,
    Number,
    Operand,
    RuleSyntaxError,
    UnknownNameError,
    parse_rule,
)


def test_parses_powersign_into_a_tree():
    rule = parse_rule("mul(exp(mul(sign_g, sign_m)), g)")
    assert rule.root == Call("mul", (Call("exp", (Call("mul", (Operand("sign_g"), Operand("sign_m"))),)), Operand("g")))
    assert rule.operands == {"sign_g", "sign_m", "g"}
    assert rule.functions == {"mul", "exp"}
    assert rule.running_averages == {"m"}
    assert not rule.uses_decay


def test_numbers_whitespace_and_parameters():
    rule = parse_rule("  add( -1.5e-2 ,\n clip(g, 0.1) ) ")
    assert rule.root.args[0] == Number(-0.015)
    assert rule.root.args[1] == Call("clip", (Operand("g"), Number(0.1)))
    assert str(rule) == "add(-0.015, clip(g, 0.1))"


def test_running_averages_follow_operands():
    assert parse_rule("adam").running_averages == {"m", "v"}
    assert parse_rule("add(y_hat, rmsprop)").running_averages == {"v", "y"}
    assert parse_rule("mul(ld, g)").uses_decay


@pytest.mark.parametrize(
    "text, position, fragment",
    [
        ("", 0, "empty rule"),
        ("mul(g, )", 7, "expected an operand"),
        ("mul(g, m", 8, "expected ',' or ')'"),
        ("mul(g, m))", 9, "after a complete rule"),
        ("add(g)", 0, "takes 2 arguments"),
        ("exp(g, m)", 0, "takes 1 argument"),
        ("clip(g, m)", 8, "must be a number literal"),
        ("clip(g, -1)", 8, "c > 0"),
        ("drop(g, 1.5)", 8, "0 <= p < 1"),
        ("mul(g $ m)", 6, "unexpected character '$'"),
        ("mul(g, 1e)", 8, "malformed exponent"),
        ("exp", 3, "needs arguments"),
        ("g(m)", 0, "operands take no arguments"),
    ],
)
def test_syntax_errors_point_at_the_offending_position(text, position, fragment):
    with pytest.raises(RuleSyntaxError, match="position") as info:
        parse_rule(text)
    assert info.value.position == position
    assert fragment in str(info.value)
    assert str(info.value).splitlines()[-1].index("^") - 2 == position


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownNameError, match=r"unknown operand 'sgn_g'.*Did you mean 'sign_g'"):
        parse_rule("mul(sgn_g, g)")
    with pytest.raises(UnknownNameError, match=r"unknown function 'mull'.*'mul'"):
        parse_rule("mull(g, g)")


def test_deep_nesting_is_a_syntax_error_not_recursion_error():
    with pytest.raises(RuleSyntaxError, match="deeper than"):
        parse_rule("neg(" * 5000 + "g" + ")" * 5000)


def test_non_string_rule_names_the_argument():
    with pytest.raises(TypeError, match="`rule` must be a string, got int"):
        parse_rule(3)


_operand = st.sampled_from(sorted(OPERANDS)).map(Operand)
_number = st.floats(-1e6, 1e6, allow_nan=False).map(Number)


def _extend(children):
    unary = st.builds(
        lambda f, x: Call(f, (x,)), st.sampled_from([f for f, n in UNARY_FUNCTIONS.items() if n == 0]), children
    )
    clip = st.builds(lambda x, c: Call("clip", (x, Number(c))), children, st.floats(1e-6, 10.0))
    binary = st.builds(lambda f, x, y: Call(f, (x, y)), st.sampled_from(sorted(BINARY_FUNCTIONS)), children, children)
    return unary | clip | binary


trees = st.recursive(_operand | _number, _extend, max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(trees)
def test_printing_then_parsing_gives_the_same_tree(tree):
    assert parse_rule(str(tree)).root == tree


_alphabet = st.sampled_from(list("(),. -+eE019_") + ["g", "m", "mul", "add", "sign_g", "clip", "exp", "x", "$", "é"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(_alphabet, max_size=25).map("".join)))
def test_fuzzed_text_parses_or_raises_a_clean_syntax_error(text):
    try:
        rule = parse_rule(text)
    except RuleSyntaxError as err:
        assert 0 <= err.position <= len(text)
        assert "position" in str(err)
    else:
        assert parse_rule(str(rule)).root == rule.root


@settings(max_examples=100, deadline=None)
@given(trees, st.integers(0, 200), st.sampled_from(["", ")", "(", ",", "$", "mul"]))
def test_corrupted_valid_rules_never_crash(tree, cut, junk):
    text = str(tree)
    cut = min(cut, len(text))
    try:
        parse_rule(text[:cut] + junk + text[cut:])
    except RuleSyntaxError:
        pass
