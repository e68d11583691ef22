"""A safe, exact calculator for agents.

Expressions are parsed with Python's ``ast`` and evaluated by walking a whitelist of node types;
nothing is ever passed to ``eval``, ``exec`` or numexpr. Arithmetic is exact (integers of any size
and fractions) until a function such as ``sqrt`` or ``sin`` needs floating point. Sizes are bounded
before they are computed, so ``9**9**9`` or a huge factorial is an error, not a hang.

Example:
    >>> calculate("1234 * 5678")
    '7006652'
    >>> calculate("15% of 80")
    '12'
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hearthlm.errors import ToolError
from hearthlm.gsm8k import normalise_number

MAX_LENGTH = 1000  # characters of input
MAX_BITS = 100_000  # about 30,000 decimal digits, for any intermediate result
MAX_FACTORIAL = 2000

Number = Fraction | float


class CalculatorError(ToolError):
    """The expression is malformed, unsupported, or too large to compute."""


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e}


def _sqrt(x: Number) -> Number:
    if isinstance(x, Fraction) and x >= 0:
        num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if num * num == x.numerator and den * den == x.denominator:
            return Fraction(num, den)  # exact for perfect squares
    return math.sqrt(x)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _round(x: Number, digits: Number = Fraction(0)) -> Number:
    if not isinstance(digits, Fraction) or digits.denominator != 1:
        raise CalculatorError("round() takes a whole number of digits")
    if isinstance(x, Fraction):
        return Fraction(round(x, int(digits)))
    return round(x, int(digits))


def _factorial(x: Number) -> Number:
    if not isinstance(x, Fraction) or x.denominator != 1 or x < 0:
        raise CalculatorError("factorial() takes a whole number 0 or more")
    if x > MAX_FACTORIAL:
        raise CalculatorError(f"factorial({x}) is too large (limit {MAX_FACTORIAL})")
    return Fraction(math.factorial(int(x)))


_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": _sqrt,
    "log": _log,
    "ln": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "round": _round,
    "abs": abs,
    "min": min,
    "max": max,
    "factorial": _factorial,
}
# How many arguments each function takes, (fewest, most), where not exactly one.
_ARITY: dict[str, tuple[int, float]] = {
    "log": (1, 2),
    "round": (1, 2),
    "min": (2, math.inf),
    "max": (2, math.inf),
}

_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d(.a-zA-Z])")


def normalise(expression: str) -> str:
    """Accept the way people write arithmetic: ``15%``, ``x of y``, ``^``, the multiplication
    and division signs, and thousands separators (``1,234``) outside a function's brackets."""
    text = expression.strip().replace("\u00d7", "*").replace("\u00f7", "/").replace("^", "**")
    text = _drop_thousands_separators(re.sub(r"\bof\b", "*", text))
    return _PERCENT.sub(r"(\1/100)", text)


_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}\b)")
_BRACKET_OR_COMMA = re.compile(r"([A-Za-z_]\w*\s*)?\(|\)|,")


def _drop_thousands_separators(text: str) -> str:
    """``1,234,567`` without its commas, except inside a function call's brackets, where a comma
    separates arguments: ``min(5,250,7)`` is 5, not ``min(5250, 7)``."""
    in_call: list[bool] = []  # for each open bracket, whether a function name comes before it
    kept: list[str] = []
    start = 0
    for token in _BRACKET_OR_COMMA.finditer(text):
        if token.group(0).endswith("("):
            in_call.append(token.group(1) is not None)
        elif token.group(0) == ")":
            if in_call:
                in_call.pop()
        elif not (in_call and in_call[-1]) and _SEPARATOR.match(text, token.start()):
            kept.append(text[start : token.start()])
            start = token.end()
    return "".join(kept) + text[start:]


def evaluate(expression: str) -> Number:
    """The exact value of ``expression``.

    Raises:
        CalculatorError: malformed, unsupported, or too large.
    """
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"expression is {len(expression)} characters; limit {MAX_LENGTH}")
    text = normalise(expression)
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        shown = expression if len(expression) <= 80 else expression[:77] + "..."
        raise CalculatorError(f"cannot parse {shown!r} as arithmetic") from None
    try:
        return _eval(tree.body)
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except (OverflowError, ValueError, TypeError) as exc:
        raise CalculatorError(f"math error: {exc}") from None
    except RecursionError:
        raise CalculatorError("expression is nested too deeply") from None


def calculate(expression: str) -> str:
    """``evaluate`` formatted for people and agents: integers plainly, fractions as decimals."""
    return format_number(evaluate(expression))


def format_number(value: Number) -> str:
    """``value`` as the calculator shows it: an integer without a decimal point, a terminating
    decimal exactly, any other fraction as ``n/d (≈ x)``, a float as Python writes it."""
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if value.denominator == 1:
        return str(value.numerator)
    # A terminating decimal is shown exactly; others as the fraction and its approximation.
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:
        return _decimal(value)
    try:
        approximation = f"{float(value):.12g}"
    except OverflowError:  # beyond a float's range, as 10**400 / 3 is
        approximation = f"{Decimal(value.numerator) / Decimal(value.denominator):.12g}"
    return f"{value.numerator}/{value.denominator} (≈ {approximation})"


def _decimal(value: Fraction) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    whole, rest = divmod(value.numerator, value.denominator)
    digits = ""
    while rest:
        rest *= 10
        digit, rest = divmod(rest, value.denominator)
        digits += str(digit)
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"unsupported value {node.value!r}: numbers only")
        # Decimal literals are exact: 0.1 means one tenth, not the nearest binary float.
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check(_power(left, right))
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalculatorError(f"unsupported operator {type(node.op).__name__}")
        return _check(op(left, right))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}; known: {', '.join(_CONSTANTS)}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            known = ", ".join(sorted(_FUNCTIONS))
            raise CalculatorError(f"unsupported function call; known functions: {known}")
        if node.keywords:
            raise CalculatorError("keyword arguments are not supported")
        name = node.func.id
        fewest, most = _ARITY.get(name, (1, 1))
        if not fewest <= len(node.args) <= most:
            raise CalculatorError(_arity_message(name, fewest, most, len(node.args)))
        args = [_eval(arg) for arg in node.args]
        return _check(_FUNCTIONS[name](*args))
    raise CalculatorError(f"unsupported syntax: {type(node).__name__}; use numbers and + - * / **")


def _arity_message(name: str, fewest: int, most: float, given: int) -> str:
    if fewest == most:
        wanted = f"{fewest} argument" + ("s" if fewest != 1 else "")
    elif most == math.inf:
        wanted = f"{fewest} or more arguments"
    else:
        wanted = f"{fewest} or {int(most)} arguments"
    message = f"{name}() takes {wanted}, got {given}"
    if given > most:
        # the usual cause: a thousands separator, which a function's brackets read as a comma
        message += (
            "; inside a function's brackets a comma separates arguments, so write 1234, not 1,234"
        )
    return message


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(exponent, Fraction) and exponent.denominator == 1 and isinstance(base, Fraction):
        size = max(abs(base.numerator), abs(base.denominator), 2).bit_length()
        if abs(exponent.numerator) * size > MAX_BITS:
            raise CalculatorError(
                f"result of a power would have about {abs(exponent.numerator) * size // 3} "
                "digits; too large"
            )
        return base ** int(exponent)
    return float(base) ** float(exponent)


def _check(value: Any) -> Number:
    if isinstance(value, int):
        value = Fraction(value)
    if isinstance(value, Fraction):
        if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
            raise CalculatorError("result is too large (over about 30,000 digits)")
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise CalculatorError("result is not a finite number")
        return value
    raise CalculatorError(f"unsupported result {value!r}")


def normalised_value(value: Number) -> str | None:
    """A calculator value as a GSM8K answer (:func:`hearthlm.gsm8k.normalise_number`), read
    from all of its digits: 14/6 is shown as "7/3 (≈ 2.33333333333)", whose first number is
    the numerator 7, but its answer is 2.333..., and a float such as 1e+20 is written out
    rather than read as 1."""
    if isinstance(value, float):
        shown = format(Decimal(repr(value)), "f")
    else:
        shown = format_number(value)  # a whole number or a terminating decimal, exactly
        if "/" in shown:
            shown = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return normalise_number(shown)
