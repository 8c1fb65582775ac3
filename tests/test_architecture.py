"""The house's shape: the layer contract in pyproject.toml holds, no module imports itself round a
circle (imports inside functions count), no function or class outgrows a screen or two, and no two
test modules share a name."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_app"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 120


def test_the_layer_contract_holds(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename="pyproject.toml", no_cache=True) == 0


def find_cycle(imports: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None: a depth-first walk
    that meets a module still on its own path."""
    finished: set[str] = set()

    def walk(path: list[str]) -> list[str] | None:
        for module in sorted(imports.get(path[-1], ())):
            if module in path:
                return path[path.index(module):] + [module]
            if module not in finished:
                found = walk(path + [module])
                if found:
                    return found
        finished.add(path[-1])
        return None

    return next((cycle for start in sorted(imports) if start not in finished for cycle in [walk([start])] if cycle),
                None)


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_round_a_circle():
    graph = grimp.build_graph("lightning_app", cache_dir=None)
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    assert find_cycle(imports) is None


def body_lines(node: ast.AST) -> int:
    """Lines of a function's or class's body, its docstring left out."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_function_or_class_outgrows_its_limit():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            limit = {ast.FunctionDef: MAX_FUNCTION_LINES, ast.AsyncFunctionDef: MAX_FUNCTION_LINES,
                     ast.ClassDef: MAX_CLASS_LINES}.get(type(node))
            if limit and body_lines(node) > limit:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({body_lines(node)} lines)")
    assert not too_long, too_long


def test_every_test_module_has_a_name_of_its_own():
    """pytest imports test modules by base name (no __init__.py in tests/): two files of one name in
    different folders stop the whole suite at collection."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
