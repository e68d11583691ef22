"""The calculator: exact against Python's fractions, bounded, and closed to code injection."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hearthlm.agents.calculator import CalculatorError, calculate, evaluate
from hearthlm.errors import ToolError

# Random expression trees over integers and decimals: (text, exact value).
leaves = st.one_of(
    st.integers(-(10**30), 10**30).map(lambda n: (f"({n})", Fraction(n))),
    st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False).map(
        lambda d: (f"({d})", Fraction(str(d)))
    ),
)


def _combine(children):
    ops = st.sampled_from(["+", "-", "*", "/"])
    return st.tuples(children, ops, children).map(
        lambda t: (f"({t[0][0]} {t[1]} {t[2][0]})", (t[0][1], t[1], t[2][1]))
    )


def _value(tree):
    if isinstance(tree, Fraction):
        return tree
    left, op, right = tree
    a, b = _value(left), _value(right)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def _exact(tree):
    try:
        return _value(tree)
    except TypeError:  # a division by zero somewhere below
        return None


@settings(max_examples=300, deadline=None)
@given(st.recursive(leaves, _combine, max_leaves=12))
def test_matches_fractions_exactly(case):
    text, tree = case
    expected = _exact(tree)
    if expected is None:
        with pytest.raises(CalculatorError, match="division by zero"):
            evaluate(text)
    else:
        assert evaluate(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**6), 10**6), st.integers(1, 10**6))
def test_floor_division_modulo_and_power(a, b):
    assert evaluate(f"{a} // {b}") == a // b
    assert evaluate(f"{a} % {b}") == a % b
    assert evaluate(f"{a} ** 3") == a**3
    assert evaluate(f"-{b} ** 2") == -(b**2)  # unary minus binds looser than power


@pytest.mark.parametrize(
    ("expression", "shown"),
    [
        ("1234 * 5678", "7006652"),
        ("15% of 80", "12"),
        ("50%", "0.5"),
        ("10 % 3", "1"),
        ("0.1 + 0.2", "0.3"),
        ("1/3", "1/3 (≈ 0.333333333333)"),
        ("2^10", "1024"),
        ("1,234,567 + 1", "1234568"),
        ("sqrt(144)", "12"),
        ("sqrt(2)", "1.4142135623730951"),
        ("round(2.567, 2)", "2.57"),
        ("round(7.456)", "7"),  # digits default to 0
        ("round(-2.5)", "-2"),
        ("abs(-4) + min(3, 9) + max(1, 2)", "9"),
        ("log(100, 10)", "2"),
        ("exp(0) + sin(0) + cos(0) + tan(0)", "2"),
        ("2 * pi", "6.283185307179586"),
        ("factorial(25)", "15511210043330985984000000"),
        ("2 ** 200", str(2**200)),
        ("10 ** 400 / 3", f"{10**400}/3 (≈ 3.33333333333e+399)"),  # past a float's range
    ],
)
def test_known_values(expression, shown):
    assert calculate(expression) == shown


@pytest.mark.parametrize(
    ("expression", "shown"),
    [
        ("min(5,250,7)", "5"),  # not min(5250, 7)
        ("max(1,500,2)", "500"),  # not max(1500, 2)
        ("min(3,100)", "3"),  # not min(3100)
        ("round(2.567,2)", "2.57"),
        ("max(2, (1,000))", "1000"),  # a bracket of its own is not an argument list
        ("1,234 + 5", "1239"),
        ("(1,234 + 5) * 2", "2478"),
        ("12,000 of 5%", "600"),
    ],
)
def test_a_comma_between_a_functions_brackets_separates_arguments(expression, shown):
    assert calculate(expression) == shown


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("min(3)", r"min\(\) takes 2 or more arguments, got 1"),
        ("abs()", r"abs\(\) takes 1 argument, got 0"),
        ("sqrt(1,234)", r"sqrt\(\) takes 1 argument, got 2; .* write 1234, not 1,234"),
        ("round(1,234.5, 2)", r"round\(\) takes 1 or 2 arguments, got 3"),
    ],
)
def test_a_wrong_number_of_arguments_is_a_calculator_error(expression, reason):
    with pytest.raises(CalculatorError, match=reason):
        evaluate(expression)


@pytest.mark.parametrize(
    "attack",
    [
        "__import__('os').system('echo hacked')",
        "(1).__class__.__bases__",
        "().__class__",
        "lambda: 1",
        "[x for x in range(10)]",
        "{x: 1 for x in range(3)}",
        "(x for x in range(3))",
        "open('/etc/passwd').read()",
        "eval('1+1')",
        "exec('import os')",
        "globals()",
        "__builtins__",
        "x := 5",
        "'a' * 10",
        "b'bytes'",
        "[1, 2, 3]",
        "1 if 1 else 2",
        "1 < 2",
        "not 1",
        "1 and 2",
        "f'{1}'",
        "getattr(1, 'real')",
        "sqrt(x=4)",
        "True + 1",
        "1; 2",
        "import os",
    ],
)
def test_injection_attempts_are_refused(attack):
    with pytest.raises(CalculatorError) as info:
        evaluate(attack)
    assert isinstance(info.value, ToolError)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("9**9**9", "too large"),
        ("10 ** 10 ** 6", "too large"),
        ("factorial(10**6)", "too large"),
        (
            "factorial(1500) * factorial(1500) * factorial(1500) * factorial(1500) * "
            "factorial(1500) * factorial(1500) * factorial(1500) * factorial(1500)",
            "too large",
        ),
        ("1 + " * 600 + "1", "limit 1000"),
        ("(" * 300 + "1" + ")" * 300, "cannot parse"),
        ("1/0", "division by zero"),
        ("sqrt(-1)", "math error"),
        ("", "empty"),
        ("2 +", "cannot parse"),
    ],
)
def test_bounded_and_reported(expression, reason):
    start = time.perf_counter()
    with pytest.raises(CalculatorError, match=reason):
        evaluate(expression)
    assert time.perf_counter() - start < 1.0
