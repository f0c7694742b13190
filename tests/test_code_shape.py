"""The package stays readable in small pieces: no module of ``lit_lora/`` over 400 lines, no function over 60.

    python -m pytest tests/test_code_shape.py

A module that grows past the limit is split by job (as ``lit_lora/sweep/plots.py`` left ``report.py``), a
function by step (docs/architecture.md, "Rules the tests keep").
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lit_lora"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def long_functions(source: str, where: str) -> list[str]:
    """``where:line name (n lines)`` for each function or method of ``source`` over ``MAX_FUNCTION_LINES``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_module_is_over_400_lines_and_no_function_over_60():
    modules, functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        where, source = path.relative_to(PACKAGE).as_posix(), path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            modules.append(f"{where} ({len(source.splitlines())} lines)")
        functions += long_functions(source, where)
    assert modules == [], f"split these modules by job: {modules}"
    assert functions == [], f"split these functions by step: {functions}"


def test_the_function_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n", "m.py") == [f"m.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
    assert long_functions("def g():\n    return 1\n", "m.py") == []
