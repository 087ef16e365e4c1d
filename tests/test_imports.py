"""The package's import arrows point one way: the config knows no implementation, evaluation
returns data and draws nothing, and no two modules import each other (imports inside functions
count: they are arrows all the same, only later)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cytofm"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The cytofm module ``name`` lives in (a module, or an attribute of one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The cytofm modules ``module`` imports, at the top or inside a function."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            owner = _owner(name)
            if owner and owner != module:
                found.add(owner)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_config_imports_no_implementation():
    """Plug-in names are checked through the registries (names only), so reading a config loads
    no reader, detector, model or stage."""
    implementation = ("cytofm.cells", "cytofm.eval", "cytofm.wsi", "cytofm.stages", "cytofm.ssl")
    bad = {
        m: sorted(i for i in GRAPH[m] if _within(i, *implementation))
        for m in MODULES
        if _within(m, "cytofm.config")
    }
    assert not {m: i for m, i in bad.items() if i}


def test_reading_a_config_loads_no_implementation():
    code = (
        "import sys\n"
        "from cytofm.config import Config, from_mapping\n"
        "from_mapping(Config, {'cells': {'detector': 'cellpose', 'backend': 'zstack'}})\n"
        "heavy = ('cytofm.cells', 'cytofm.wsi', 'cytofm.stages', 'cytofm.ssl', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_evaluation_returns_data_and_draws_nothing():
    bad = {
        m: sorted(i for i in GRAPH[m] if _within(i, "cytofm.report", "cytofm.stages"))
        for m in MODULES
        if _within(m, "cytofm.eval")
    }
    assert not {m: i for m, i in bad.items() if i}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_two_modules_import_each_other():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_two_packages_import_each_other():
    """Between the package's parts (config, wsi, cells, ssl, eval, report, stages, ...) too:
    a part that needs another's work is above it, never beside and below at once."""

    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    parts: dict[str, set[str]] = {}
    for module, imported in GRAPH.items():
        parts.setdefault(part(module), set()).update(
            part(i) for i in imported if part(i) != part(module)
        )
    assert _cycles(parts) == []
