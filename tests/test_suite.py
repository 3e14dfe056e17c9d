"""The suite itself: no assertion in it is written so that it cannot fail."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def always_true(test: ast.expr) -> bool:
    """An assert test that holds whatever the code under test does, or nearly always.

    ``assert a == b if c else d`` parses as ``(a == b) if c else d``: when ``c`` is false it
    asserts ``d`` alone (a non-empty tuple, say), which is always true.
    """
    if isinstance(test, ast.IfExp):
        return True
    if isinstance(test, ast.Tuple):
        return bool(test.elts)
    return isinstance(test, ast.Constant) and bool(test.value)


def test_no_assertion_is_a_conditional_expression_or_a_constant() -> None:
    found = [
        f"{path.relative_to(TESTS.parent)}:{node.lineno}"
        for path in sorted(TESTS.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Assert) and always_true(node.test)
    ]
    assert found == [], "write `assert x == (a if c else b)`, or split the assertion"
