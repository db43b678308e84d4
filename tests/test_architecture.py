"""Imports point one way, down the flow of DESIGN §4 (config → data and model → train → prune →
store → report ← cli), so that no import circle can form again and a module's private names stay
its own. Read from the source with `ast`: nothing is imported, and an import inside a function
counts like any other (it is still a dependency, only a later one)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top: a module may import from its own layer or a lower one. A subpackage is one entry
# (`report`: all of lth/report/); `lth` is the package itself, whose names resolve lazily.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("lth", "config", "seeds", "signals", "schedule"),  # the experiment as data
    ("data", "models", "masks", "progress"),  # data and model
    ("engine", "energy"),  # one iteration, and what it costs
    ("train",),
    ("pruning", "pruning_at_init"),  # which weights go: after training, or at θ0
    ("rundir",),  # store
    ("layout",),  # how a CPU study lays out memory: measured once per machine, cached
    ("track",),  # experiment trackers: a copy of what the run directory records, sent as it is written
    ("study",),  # the round loop: train, prune, store
    ("stability", "export", "verify", "cells"),  # what is done with studies, and a comparison's cells
    ("report", "show"),  # read what is stored
    ("executors",),  # where cells run
    ("status",),  # how each cell stands
    ("compare",),  # a comparison: plan, schedule, report
    ("cli", "__main__"),
    ("reference",),  # the docs' reference pages, read off the CLI's parser
)
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}


@dataclass(frozen=True)
class Import:
    """One import of an lth module by another, and where it stands."""

    source: str
    target: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.source} imports {self.target} (line {self.line}: {self.text})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lth_sources() -> dict[str, str]:
    """Every module under src/lth by its dotted name."""
    return {module_name(p): p.read_text() for p in sorted((SRC / "lth").rglob("*.py"))}


def resolve(name: str, modules: set[str]) -> str:
    """The module a dotted name falls in: itself, or the longest module it starts with."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def from_base(node: ast.ImportFrom, module: str, modules: set[str]) -> str:
    """The absolute module of `from X import ...`, relative forms included."""
    if not node.level:
        return node.module or ""
    is_package = any(m.startswith(module + ".") for m in modules)
    package = module.split(".") if is_package else module.split(".")[:-1]
    return ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))


@dataclass(frozen=True)
class Name:
    """A name an import statement takes from lth: the module it comes from, the name, and the
    module that the local name it binds then stands for (None: it binds no module)."""

    module: str
    name: str
    local: str
    binds: str | None


def names_imported(node: ast.AST, module: str, modules: set[str]) -> list[Name]:
    if isinstance(node, ast.Import):
        return [Name(resolve(a.name, modules), a.name, a.asname or "lth", resolve(a.name, modules) if a.asname else "lth")
                for a in node.names if a.name.split(".")[0] == "lth"]
    if isinstance(node, ast.ImportFrom) and (base := from_base(node, module, modules)).split(".")[0] == "lth":
        full = [(a, f"{base}.{a.name}") for a in node.names]
        return [Name(f if f in modules else resolve(base, modules), a.name, a.asname or a.name, f if f in modules else None) for a, f in full]
    return []


def import_edges(sources: dict[str, str]) -> list[Import]:
    """Every import of one lth module by another, wherever it stands in the file."""
    modules = set(sources)
    edges = []
    for module, text in sources.items():
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            for name in names_imported(node, module, modules):
                if name.module != module:
                    edges.append(Import(module, name.module, node.lineno, lines[node.lineno - 1].strip()))
    return edges


def find_cycle(edges: list[Import]) -> list[Import]:
    """The imports of one circle, in order, or [] when the graph has none."""
    graph: dict[str, list[Import]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
    done: set[str] = set()

    def visit(path: list[Import], on_path: list[str]) -> list[Import]:
        for edge in graph.get(on_path[-1], []):
            if edge.target in on_path:
                return path[on_path.index(edge.target):] + [edge]
            if edge.target not in done and (cycle := visit(path + [edge], on_path + [edge.target])):
                return cycle
        done.add(on_path[-1])
        return []

    for start in sorted(graph):
        if start not in done and (cycle := visit([], [start])):
            return cycle
    return []


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(sources: dict[str, str]) -> list[str]:
    """`from lth.x import _y`, and `x._y` where x names an lth module, in another lth module."""
    modules = set(sources)
    found = []
    for module, text in sources.items():
        tree = ast.parse(text)
        bound: dict[str, str] = {}
        for node in ast.walk(tree):
            for name in names_imported(node, module, modules):
                if isinstance(node, ast.ImportFrom) and is_private(name.name) and name.module != module:
                    found.append(f"{module} takes {name.module}'s private {name.name} (line {node.lineno})")
                if name.binds:
                    bound[name.local] = name.binds

        def module_of(expr: ast.expr) -> str | None:
            """The lth module an expression such as `lth.report.figures` stands for, if any."""
            if isinstance(expr, ast.Name):
                return bound.get(expr.id)
            if isinstance(expr, ast.Attribute) and (outer := module_of(expr.value)) and f"{outer}.{expr.attr}" in modules:
                return f"{outer}.{expr.attr}"
            return None

        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr) and (owner := module_of(node.value)) and owner != module:
                found.append(f"{module} uses {owner}'s private {node.attr} (line {node.lineno})")
    return found


def layer_of(module: str) -> str:
    """The LAYERS entry of a module: `lth` itself, else its first name under lth."""
    return "lth" if module == "lth" else module.split(".")[1]


def test_every_module_has_a_layer():
    entries = {layer_of(m) for m in lth_sources()}
    assert not entries - set(LAYER), f"modules in no layer of LAYERS: {sorted(entries - set(LAYER))}; add each where its imports allow"
    assert not set(LAYER) - entries, f"LAYERS names modules that do not exist: {sorted(set(LAYER) - entries)}"


def test_no_import_circle():
    cycle = find_cycle(import_edges(lth_sources()))
    assert not cycle, "import circle: " + " → ".join([cycle[0].source] + [e.target for e in cycle]) + "; " + "; ".join(map(str, cycle))


def test_imports_point_down_the_layers():
    layered = [(e, layer_of(e.source), layer_of(e.target)) for e in import_edges(lth_sources())]
    upward = [f"{e} — {low} (layer {LAYER[low]}) may not import {high} (layer {LAYER[high]})"
              for e, low, high in layered if low in LAYER and high in LAYER and LAYER[low] < LAYER[high]]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_module_reaches_another_modules_private_names():
    uses = private_uses(lth_sources())
    assert not uses, "private names used from another module (make them public, or move the code):\n" + "\n".join(uses)


def test_the_checks_see_what_they_are_for():
    """The checks themselves: a circle closed inside a function, and private names both ways."""
    sources = {"lth": "", "lth.a": "from lth import b\n", "lth.b": "def f():\n    import lth.a\n    return lth.a._hidden, lth.a.__doc__\n",
               "lth.c": "from lth.a import _secret\nfrom lth import b as bee\nbee._x\n"}
    cycle = find_cycle(import_edges(sources))
    assert [(e.source, e.target) for e in cycle] == [("lth.a", "lth.b"), ("lth.b", "lth.a")] and cycle[1].line == 2
    uses = private_uses(sources)
    assert sorted(uses) == ["lth.b uses lth.a's private _hidden (line 3)", "lth.c takes lth.a's private _secret (line 1)",
                            "lth.c uses lth.b's private _x (line 3)"]
