"""A safe evaluator for ``Upstash-Retry-Delay`` expressions.

QStash lets a publisher choose the delay before each retry with an arithmetic
expression in milliseconds over the variable ``retried`` (0 before the first
retry), for example ``1000 * (1 + retried)`` or ``pow(2, retried) * 1000``. The
expression is parsed with :mod:`ast` and walked node by node; only numbers, the
variable, ``+ - * / % **``, unary signs and a fixed set of functions are allowed.
Python's ``eval`` is never used, so a hostile header can do nothing but fail.
"""

from __future__ import annotations

import ast
import math
import typing as t

#: Expressions longer than this are refused before parsing.
MAX_LENGTH = 512

#: Results are capped to keep ``**`` from building huge integers.
_MAX_MAGNITUDE = 1e15

_FUNCTIONS: dict[str, t.Callable[..., float]] = {
    "pow": lambda a, b: float(math.pow(a, b)),
    "sqrt": lambda a: math.sqrt(a),
    "abs": lambda a: float(abs(a)),
    "exp": lambda a: math.exp(a),
    "floor": lambda a: float(math.floor(a)),
    "ceil": lambda a: float(math.ceil(a)),
    "round": lambda a: float(round(a)),
    "min": lambda *a: float(min(a)),
    "max": lambda *a: float(max(a)),
}

_BINARY: dict[type[ast.operator], t.Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: float(math.pow(a, b)),
}


class ExpressionError(ValueError):
    """A retry-delay expression could not be parsed or evaluated."""


def compile_expression(source: str) -> ast.expr:
    """Parse ``source`` and check that it only uses allowed syntax.

    :param source: The ``Upstash-Retry-Delay`` header value.
    :raises ExpressionError: The expression is too long, malformed or uses
        something other than numbers, ``retried``, operators and the functions.
    """
    if len(source) > MAX_LENGTH:
        raise ExpressionError(
            f"The retry delay expression is longer than {MAX_LENGTH} characters."
            " Use a shorter expression."
        )

    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        raise ExpressionError(
            f"Invalid retry delay expression {source!r}. Use arithmetic over"
            " 'retried', such as '1000 * (1 + retried)'."
        ) from None

    # Evaluating once with a sample value finds unknown names and bad arity early.
    evaluate(tree.body, retried=0)
    return tree.body


def evaluate(node: ast.expr, *, retried: int) -> float:
    """Evaluate a parsed expression for the given retry number.

    :param node: The expression from :func:`compile_expression`.
    :param retried: How many retries happened before this one.
    :raises ExpressionError: The expression uses disallowed syntax or fails.
    """
    try:
        value = _walk(node, retried)
    except ExpressionError:
        raise
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ExpressionError(f"The retry delay expression failed: {exc}.") from None

    if math.isnan(value) or abs(value) > _MAX_MAGNITUDE:
        raise ExpressionError("The retry delay expression gave no usable number.")

    return value


def evaluate_source(source: str, *, retried: int) -> float:
    """Parse and evaluate ``source`` in one step; see :func:`evaluate`."""
    return evaluate(compile_expression(source), retried=retried)


def _walk(node: ast.expr, retried: int) -> float:
    """Return the value of one node, refusing every node type not listed."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(t.cast(float, node.value))

    if isinstance(node, ast.Name) and node.id == "retried":
        return float(retried)

    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _walk(node.operand, retried)
        return operand if isinstance(node.op, ast.UAdd) else -operand

    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _walk(node.left, retried)
        right = _walk(node.right, retried)
        return _check(_BINARY[type(node.op)](left, right))

    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and node.args
    ):
        args = [_walk(arg, retried) for arg in node.args]
        return _check(_FUNCTIONS[node.func.id](*args))

    raise ExpressionError(
        f"Unsupported element {ast.dump(node)[:40]!r} in the retry delay"
        " expression. Use numbers, 'retried', + - * / % and the functions"
        " pow, sqrt, abs, exp, floor, ceil, round, min and max."
    )


def _check(value: float) -> float:
    """Stop runaway intermediate values before they grow further."""
    if math.isinf(value) or abs(value) > _MAX_MAGNITUDE:
        raise ExpressionError("The retry delay expression overflowed.")

    return value
