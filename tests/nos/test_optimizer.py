"""RuleOptimizer: equivalence with torch.optim, state handling, errors."""

import copy
import io
import math

import pytest
import torch

from ganno_lightning.nos import NAMED_RULES, NonFiniteUpdateError, RuleOptimizer
from ganno_lightning.nos.dsl import RuleSyntaxError, UnknownNameError
from ganno_lightning.nos.dsl import OPERANDS, Operand, parse_rule
from ganno_lightning.nos.optimizer import decay_value
from ganno_lightning.nos.rules import resolve_rule


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _train(model, opt, steps=40, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "make_reference, rule_kwargs",
    [
        (lambda p: torch.optim.Adam(p, lr=1e-2), dict(rule="div(m_hat, sqrt(v_hat))", lr=1e-2)),
        (lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.8, 0.99)), dict(rule="adam", lr=3e-3, betas=(0.8, 0.99))),
        (lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.99), dict(rule="div(g, sqrt(v))", lr=1e-2, betas=(0.9, 0.99))),
        (lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.9), dict(rule="rmsprop_torch", lr=1e-2, betas=(0.9, 0.9))),
        (lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9), dict(rule="div(m, 0.1)", lr=1e-2)),
        (lambda p: torch.optim.SGD(p, lr=5e-2), dict(rule="g", lr=5e-2)),
    ],
    ids=["adam", "adam-betas", "rmsprop", "rmsprop-named", "sgd-momentum", "sgd"],
)
def test_dsl_versions_match_torch_optim(make_reference, rule_kwargs):
    ref_model, model = _model(), _model()
    expected = _train(ref_model, make_reference(ref_model.parameters()))
    got = _train(model, RuleOptimizer(model.parameters(), **rule_kwargs))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    # and the run actually moved the weights, so the comparison is not vacuous
    assert not torch.allclose(got[0], _model()[0].weight)


@pytest.mark.parametrize("name", sorted(OPERANDS))
def test_operand_rule_text_is_never_shadowed_by_a_named_rule(name):
    # the canonical text of the lone-operand rule (what Rule.text and the controller produce) must
    # resolve to that operand, whether passed as text, as a Rule, or re-read from the param group
    assert resolve_rule(name).root == Operand(name)
    opt = RuleOptimizer([torch.nn.Parameter(torch.zeros(2))], rule=parse_rule(name), decay_steps=10)
    assert opt.rule().root == Operand(name) and opt.param_groups[0]["rule"] == name
    if name in NAMED_RULES:
        assert parse_rule(NAMED_RULES[name]).root == Operand(name)


def test_rmsprop_operand_is_bias_corrected_and_the_torch_variant_is_not():
    g = torch.tensor([0.5, -2.0])
    for rule, expected in (("rmsprop", torch.sign(g)), ("rmsprop_torch", torch.sign(g) / math.sqrt(0.01))):
        p = torch.nn.Parameter(torch.zeros(2))
        opt = RuleOptimizer([p], rule=rule, lr=1.0, betas=(0.9, 0.99), eps=0.0)
        p.grad = g.clone()
        opt.step()  # v = 0.01 g^2, v_hat = g^2
        torch.testing.assert_close(p.detach(), -expected)


def test_powersign_matches_its_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))
    opt = RuleOptimizer([p], rule="powersign", lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()  # m = 0.1 g: signs agree everywhere -> e * g
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 1.0, 1.0]) - 0.1 * math.e * torch.tensor([1.0, -2.0, 0.5]))
    before = p.detach().clone()
    p.grad = torch.tensor([-1.0, -1.0, -1.0])  # m now: [0.09-0.1, -0.18-0.1, 0.045-0.1] -> signs -,-,-
    opt.step()
    m = 0.9 * 0.1 * torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.tensor([-1.0, -1.0, -1.0])
    factor = torch.exp(torch.sign(torch.tensor([-1.0, -1.0, -1.0])) * torch.sign(m))
    torch.testing.assert_close(p.detach(), before - 0.1 * factor * torch.tensor([-1.0, -1.0, -1.0]))


def test_addsign_ld_decays_to_plain_sgd():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = RuleOptimizer([p], rule="addsign_ld", lr=1.0, decay_steps=1)
    p.grad = torch.tensor([1.0, -1.0])
    opt.step()  # t = T: ld = 0 -> (1 + 0) * g
    torch.testing.assert_close(p.detach(), torch.tensor([-1.0, 1.0]))


def test_decay_values():
    assert decay_value("ld", 0, 10, 0.5) == 1.0 and decay_value("ld", 10, 10, 0.5) == 0.0
    assert decay_value("cd", 0, 10, 1.0) == pytest.approx(1.0)
    assert decay_value("cd", 5, 10, 1.0) == pytest.approx(0.0)
    assert decay_value("rd", 5, 10, 2.0) == pytest.approx(1.0)  # restarted
    assert decay_value("lcd", 10, 10, 0.5) == pytest.approx(0.001)
    assert decay_value("ld", 50, 10, 0.5) == 0.0  # past the horizon it holds


def test_only_needed_running_averages_are_stored():
    model = _model()
    opt = RuleOptimizer(model.parameters(), rule="powersign", lr=1e-3)
    _train(model, opt, steps=2)
    state = opt.state[next(model.parameters())]
    assert set(state) == {"step", "exp_avg"}
    opt = RuleOptimizer(model.parameters(), rule="add(y_hat, g)", lr=1e-3)
    _train(model, opt, steps=2)
    assert set(opt.state[next(model.parameters())]) == {"step", "exp_avg_cube"}


@pytest.mark.parametrize("rule", sorted(NAMED_RULES))
def test_every_named_rule_trains_and_stays_finite(rule):
    model = _model()
    opt = RuleOptimizer(model.parameters(), rule=rule, lr=1e-3, decay_steps=20)
    _train(model, opt, steps=20)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_state_dict_round_trip_continues_identically():
    model = _model()
    opt = RuleOptimizer(model.parameters(), rule="powersign_cd", lr=1e-2, decay_steps=50)
    _train(model, opt, steps=10)
    twin = copy.deepcopy(model)
    twin_opt = RuleOptimizer(twin.parameters(), rule="g", lr=0.5, decay_steps=1)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # through a file, as a checkpoint would
    buffer.seek(0)
    twin_opt.load_state_dict(torch.load(buffer, weights_only=True))
    assert twin_opt.param_groups[0]["rule"] == opt.param_groups[0]["rule"]
    a = _train(model, opt, steps=10, seed=7)
    b = _train(twin, twin_opt, steps=10, seed=7)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_param_groups_can_use_different_rules():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = RuleOptimizer([{"params": [a]}, {"params": [b], "rule": "sign_g", "lr": 0.5}], rule="g", lr=0.1)
    a.grad, b.grad = torch.full((2,), 3.0), torch.full((2,), 3.0)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.7))
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.5))


def test_nan_rule_raises_and_leaves_weights_unchanged():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = RuleOptimizer([p], rule="log(sub(g, g))", lr=0.1)  # log|0| = -inf
    p.grad = torch.tensor([1.0, 1.0])
    with pytest.raises(NonFiniteUpdateError, match=r"rule `log\(sub\(g, g\)\)` produced a non-finite update"):
        opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), r"`lr` must be a positive float, got -1.0"),
        (dict(lr=0), r"`lr` must be a positive float, got 0"),
        (dict(betas=(0.9, 1.0)), r"`betas` must be two floats in \[0, 1\), got \(0.9, 1.0\)"),
        (dict(eps=-1.0), r"`eps` must be a non-negative float, got -1.0"),
        (dict(rule="powersign_ld"), r"`decay_steps` must be a positive int when the rule uses the decay operand\(s\) ld, got None"),
        (dict(rule=42), r"`rule` must be a rule name, rule text or Rule, got int: 42"),
        # a value of the wrong type names its argument too, not float()'s "could not convert"
        (dict(decay_periods="x"), r"`decay_periods` must be a positive float, got 'x'\. .*e\.g\. decay_periods=0\.5"),
        (dict(decay_periods=0.0), r"`decay_periods` must be a positive float, got 0\.0"),
        (dict(beta3="x"), r"`beta3` must be a float in \[0, 1\), got 'x'"),
        (dict(eps="1e-8"), r"`eps` must be a non-negative float, got '1e-8'"),
        (dict(betas=0.9), r"`betas` must be two floats in \[0, 1\), got 0\.9"),
        (dict(betas=("a", 0.999)), r"`betas` must be two floats in \[0, 1\), got \('a', 0\.999\)"),
        (dict(lr="0.1"), r"`lr` must be a positive float, got '0\.1'"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        RuleOptimizer(_model().parameters(), **kwargs)


def test_unknown_operand_in_rule_is_a_clear_error():
    with pytest.raises(UnknownNameError, match="unknown operand 'grad'"):
        RuleOptimizer(_model().parameters(), rule="mul(grad, 2)")
    with pytest.raises(RuleSyntaxError):
        RuleOptimizer(_model().parameters(), rule="powersign(")


# ---- the fused, in-place evaluator against a plain out-of-place reference on random rules ----
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ganno_lightning.nos.dsl import BINARY_FUNCTIONS, Call, Number  # noqa: E402

# every operand; noise is made reproducible by seeding the generator before the step
_OPERANDS = ["g", "g2", "g3", "m", "v", "y", "m_hat", "v_hat", "y_hat", "sign_g", "sign_m", "noise", "w", "adam", "rmsprop", "ld", "cd", "rd", "lcd"]
assert set(_OPERANDS) == set(OPERANDS)


def _reference(node, env, eps):
    if isinstance(node, Number):
        return torch.tensor(node.value, dtype=torch.float64)
    if isinstance(node, Operand):
        return env[node.name]
    a = [_reference(x, env, eps) for x in node.args]
    f = node.function
    return {
        "id": lambda: a[0],
        "neg": lambda: -a[0],
        "exp": lambda: torch.exp(a[0]),
        "log": lambda: torch.log(a[0].abs()),
        "sqrt": lambda: torch.sqrt(a[0].abs()),
        "sign": lambda: torch.sign(a[0]),
        "clip": lambda: a[0].clamp(-node.args[1].value, node.args[1].value),
        "add": lambda: a[0] + a[1],
        "sub": lambda: a[0] - a[1],
        "mul": lambda: a[0] * a[1],
        "div": lambda: a[0] / (a[1] + eps),
        "pow": lambda: torch.pow(a[0], a[1]),
        "keep": lambda: a[0],
    }[f]()


def _extend(children):
    unary = st.builds(lambda f, x: Call(f, (x,)), st.sampled_from(["id", "neg", "exp", "log", "sqrt", "sign"]), children)
    clip = st.builds(lambda x: Call("clip", (x, Number(0.5))), children)
    binary = st.builds(lambda f, x, y: Call(f, (x, y)), st.sampled_from(sorted(BINARY_FUNCTIONS)), children, children)
    return unary | clip | binary


_trees = st.recursive(
    st.sampled_from(_OPERANDS).map(Operand) | st.sampled_from([0.5, 1.0, 2.0, -1.0]).map(Number), _extend, max_leaves=8
)


def _examples(test):
    # every composite operand alone: "rmsprop" once resolved to the named rule div(g, sqrt(v))
    for name in _OPERANDS:
        test = example(tree=Operand(name))(test)
    # the same operand read twice, the later read modified in place (buffer aliasing), and an
    # operand read both directly and inside a composite operand that recomputes it
    for text in (
        "add(v_hat, neg(v_hat))", "mul(g2, exp(g2))", "sub(m_hat, sqrt(m_hat))", "div(g3, g3)",
        "add(noise, neg(noise))", "mul(noise, exp(noise))", "add(sign_m, clip(sign_m, 0.5))",
        "add(y_hat, log(y_hat))", "div(adam, adam)", "add(rmsprop, neg(rmsprop))",
        "add(rmsprop, v_hat)", "sub(v_hat, rmsprop)", "mul(adam, sqrt(m_hat))", "add(g3, neg(g2))",
        "add(neg(g2), g3)", "mul(sign_g, sub(g, sign_g))", "pow(v_hat, v_hat)", "sub(1, div(g2, g2))",
        "mul(lcd, rmsprop)", "add(cd, mul(rd, adam))", "mul(ld, id(keep(rmsprop, g)))",
    ):
        test = example(tree=parse_rule(text).root)(test)
    return test


@settings(max_examples=150, deadline=None)
@given(_trees)
@_examples
def test_fused_evaluation_matches_reference(tree):
    torch.manual_seed(0)
    w0 = torch.randn(2, 3, dtype=torch.float64)
    b0 = torch.randn(3, dtype=torch.float64)
    params = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())]
    grads = [torch.randn(2, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    b1, b2, b3, eps, lr = 0.9, 0.99, 0.95, 1e-8, 0.1
    opt = RuleOptimizer(params, rule=str(tree), lr=lr, betas=(b1, b2), beta3=b3, eps=eps, decay_steps=10, check_finite=False)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.manual_seed(1)
    opt.step()
    torch.manual_seed(1)  # the optimizer draws noise once per step, for the parameters in order
    noises = [torch.randn_like(w) * math.sqrt(0.01 / 2.0**0.55) for w in (w0, b0)]
    for p, w, g, noise in zip(params, (w0, b0), grads, noises):
        m, v, y = (1 - b1) * g, (1 - b2) * g**2, (1 - b3) * g**3  # running averages after step 1
        env = {
            "g": g, "g2": g**2, "g3": g**3, "m": m, "v": v, "y": y,
            "m_hat": m / (1 - b1), "v_hat": v / (1 - b2), "y_hat": y / (1 - b3),
            "sign_g": torch.sign(g), "sign_m": torch.sign(m), "w": w,
            "adam": (m / (1 - b1)) / (torch.sqrt(v / (1 - b2)) + eps),
            "rmsprop": g / (torch.sqrt(v / (1 - b2)) + eps),
            "noise": noise,
            **{d: torch.tensor(decay_value(d, 1, 10, 0.5), dtype=torch.float64) for d in ("ld", "cd", "rd", "lcd")},
        }
        expected = w - lr * _reference(tree, env, eps)
        torch.testing.assert_close(p.detach(), expected.expand_as(w), rtol=1e-6, atol=1e-9, equal_nan=True)
    # the gradients and running averages the rule read were not overwritten in place
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g)
        averages = {"exp_avg": (1 - b1) * g, "exp_avg_sq": (1 - b2) * g**2, "exp_avg_cube": (1 - b3) * g**3}
        for key, value in opt.state[p].items():
            if key != "step":
                torch.testing.assert_close(value, averages[key])
