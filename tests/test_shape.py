"""The shape the project keeps (issue #10): short functions, thin tasks, a Prefect-free library."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_TASK_STATEMENTS = 8


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def functions(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def statements(body: list[ast.stmt]) -> int:
    """Statements in a body, counted recursively; a leading docstring is not one."""
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    count = 0
    for node in body:
        count += 1
        for field in ("body", "orelse", "finalbody", "handlers"):
            count += statements(getattr(node, field, []) or [])
    return count


@pytest.mark.parametrize("path", python_files("sknet", "tasks", "flows"), ids=lambda p: str(p.relative_to(REPO)))
def test_no_function_is_longer_than_a_screen(path):
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in functions(path)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("path", python_files("tasks"), ids=lambda p: str(p.relative_to(REPO)))
def test_a_task_is_a_decorator_a_logger_and_one_call(path):
    tasks = [f for f in functions(path) if {decorator_name(d) for d in f.decorator_list} & {"task", "materialize"}]
    fat = [f"{f.name} ({statements(f.body)} statements)" for f in tasks if statements(f.body) > MAX_TASK_STATEMENTS]
    assert fat == []


def test_the_library_never_imports_prefect():
    importers = []
    for path in python_files("sknet"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "prefect" or name.startswith("prefect.") for name in names):
                importers.append(str(path.relative_to(REPO)))
    assert importers == []


def test_bench_imports_neither_tests_nor_private_names():
    bad = []
    for path in python_files("bench"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] == "tests" or any(a.name.startswith("_") for a in node.names):
                    bad.append(f"{path.name}: from {node.module} import {', '.join(a.name for a in node.names)}")
    assert bad == []
