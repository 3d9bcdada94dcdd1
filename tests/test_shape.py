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


CODE_FOLDERS = ("sknet", "infra", "bench", "tasks", "flows")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that `path` imports anywhere (module level, in functions, under TYPE_CHECKING):
    for `from a import b`, a.b if that is a module, else a."""
    package = module_name(path).split(".")[:None if path.name == "__init__.py" else -1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from this package, one package up per further dot
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found - {module_name(path)}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of two or more modules that import one another, directly or through others (Tarjan's
    strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = stack[stack.index(module):]
            del stack[stack.index(module):]
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_finding_import_cycles_sees_through_indirection_but_not_one_way_imports():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_two_modules_import_each_other():
    paths = {module_name(p): p for p in python_files(*CODE_FOLDERS)}
    graph = {module: imported_modules(path, set(paths)) for module, path in paths.items()}
    assert import_cycles(graph) == []
