"""The library's modules import downwards only, and no two of them import each other.

Each module of ``spectrallab`` belongs to one layer; a module may import modules of its own layer
or of layers below it, never above. The layers, bottom to top:

0. foundations — ``linalg`` (tensor math; it reads a layer's matrix by duck typing, so it needs no
   method class), ``optim_hooks`` (the step-hook plumbing methods install on an optimizer),
   ``checkpoint``, ``profiles``, ``progress``, ``hyperbolic``, ``shards`` (FSDP2's sharded tensors, gathered
   whole for method code): torch and the standard library only.
1. ``methods.options`` — option declarations.
2. ``methods.base`` — ``Method``, ``AdaptedLinear``, the registry.
3. ``methods`` and every ``methods.<name>`` — one file per method (a method may build on another,
   DoRA on LoRA; the package imports them all to register them).
4. ``apply`` — model surgery.
5. ``optim``, ``memory``, ``truncate``, ``peft_io``, ``fsdp`` — what works on an adapted model.
6. ``runs`` and ``tasks.*`` — the training record and the toy problems.
7. ``distributed`` — one run on several processes (DDP or FSDP2 wrapping, each rank's batch slice).
8. ``train`` — the training loop.
9. ``experiments`` — the runs the book shows.
10. ``pretrain`` — the command line.
11. ``spectrallab`` itself — the public facade (``import spectrallab as sl``); nothing inside imports it.

(The widgets live outside ``src`` and sit above all of these.) A module missing from ``LAYERS``
fails the test, so a new file gets a place on purpose.

How imports are read, from the source with :mod:`ast`, so nothing is executed:

* every ``import`` / ``from ... import`` statement, at module level *and* inside functions and
  classes (an import deferred to call time still makes a cycle, it only hides it), relative and
  absolute; ``from package import name`` counts as importing ``package.name`` when that is a module;
* importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` (and ``a``) first, when the importer
  lives outside them: that edge is added, because it is how ``import spectrallab.methods.base``
  runs every method file;
* a package ``__init__`` that imports its submodules through ``importlib.import_module`` with a
  computed name (``spectrallab.methods`` registering every method) imports all of them.

Imports of other packages (torch, transformers, ...) are not this test's business.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

import spectrallab

ROOT = Path(spectrallab.__file__).parent
PACKAGE = "spectrallab"

LAYERS: list[tuple[str, ...]] = [
    (
        "spectrallab.linalg",
        "spectrallab.optim_hooks",
        "spectrallab.checkpoint",
        "spectrallab.profiles",
        "spectrallab.progress",
        "spectrallab.hyperbolic",
        "spectrallab.shards",
    ),
    ("spectrallab.methods.options",),
    ("spectrallab.methods.base",),
    ("spectrallab.methods", "spectrallab.methods.*"),
    ("spectrallab.apply",),
    ("spectrallab.optim", "spectrallab.memory", "spectrallab.truncate", "spectrallab.peft_io", "spectrallab.fsdp"),
    ("spectrallab.runs", "spectrallab.tasks", "spectrallab.tasks.*"),
    ("spectrallab.distributed",),
    ("spectrallab.train",),
    ("spectrallab.experiments",),
    ("spectrallab.pretrain",),
    ("spectrallab",),
]


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of the package."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([package, *parts])] = path
    return found


def is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def resolve_relative(importer: str, files: dict[str, Path], level: int, module: str | None) -> str:
    """The absolute name that ``from <level dots><module> import ...`` in ``importer`` refers to."""
    base = importer if is_package(importer, files) else importer.rpartition(".")[0]
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{module}" if module else base


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, files: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, by the rules in this file's docstring."""
    tree = ast.parse(files[name].read_text(encoding="utf-8"), filename=str(files[name]))
    targets: set[str] = set()
    for node in ast.walk(tree):  # every statement, at any depth: function-level imports count
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_relative(name, files, node.level, node.module) if node.level else node.module
            for alias in node.names:  # a submodule, or a name the module `source` defines
                targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and is_package(name, files)
        ):
            argument = node.args[0] if node.args else None
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                targets.add(argument.value)
            else:  # a computed name: the package imports its submodules (``for m in iter_modules``)
                targets.update(m for m in files if m.rpartition(".")[0] == name)
    ours = {t for t in targets if t in files}
    # Importing a.b.c runs a.b's __init__ first, unless the importer is already inside a.b.
    ours |= {a for t in ours for a in ancestors(t) if a in files and not (name == a or name.startswith(a + "."))}
    ours.discard(name)
    return ours


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root, package)
    return {name: imports_of(name, files) for name in files}


def layer_of(name: str, layers=LAYERS) -> int | None:
    """The layer index of ``name``: an exact entry wins over a pattern, a longer pattern over a shorter."""
    exact = [i for i, layer in enumerate(layers) if name in layer]
    if exact:
        return exact[0]
    matches = [(len(p), i) for i, layer in enumerate(layers) for p in layer if "*" in p and fnmatch.fnmatch(name, p)]
    return max(matches)[1] if matches else None


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Each strongly connected component of more than one module (Tarjan): one concrete cycle through
    it, as a path, and all its members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_cycle_path(graph, set(c)), sorted(c)) for c in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete cycle inside a strongly connected component, for a readable message."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & component)
        back = [w for w in nxt if w in seen]
        if back:
            return path[path.index(back[0]) :] + [back[0]]
        path.append(nxt[0])
        seen.add(nxt[0])


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    found = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target, layers) > layer_of(importer, layers):
                found.append(
                    f"{importer} (layer {layer_of(importer, layers)}) imports {target} "
                    f"(layer {layer_of(target, layers)})"
                )
    return found


# -- the checks --------------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in module_files() if layer_of(name) is None)
    assert not unplaced, f"modules missing from LAYERS in tests/test_layering.py: {', '.join(unplaced)}"


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(
        f"{' → '.join(path)}  (modules that import each other: {', '.join(members)})" for path, members in found
    )


def test_imports_go_downwards_only():
    found = upward_imports(import_graph())
    assert not found, "imports against the layering (LAYERS in tests/test_layering.py):\n" + "\n".join(found)


# -- the checker itself, on a small made-up package ------------------------------------------------


def write_package(tmp_path: Path, sources: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for relative, source in sources.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_the_checker_sees_function_level_relative_and_absolute_imports(tmp_path):
    root = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "def f():\n    from .high import g\n",  # deferred, relative: still an edge
            "high.py": "import pkg.low\n",  # absolute
            "sub/__init__.py": "import importlib\nfor m in ['a']:\n    importlib.import_module(f'{__name__}.{m}')\n",
            "sub/a.py": "from .. import low\n",  # `from package import module`
            "user.py": "from .sub.a import x\n",  # runs sub/__init__ first
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.low"] == {"pkg.high"}
    assert graph["pkg.high"] == {"pkg.low"}
    assert graph["pkg.sub"] == {"pkg.sub.a"}
    assert graph["pkg.sub.a"] == {"pkg.low"}
    assert graph["pkg.user"] == {"pkg.sub.a", "pkg.sub"}
    assert cycles(graph) == [(["pkg.high", "pkg.low", "pkg.high"], ["pkg.high", "pkg.low"])]
    layers = [("pkg.low",), ("pkg.high", "pkg.sub", "pkg.sub.*"), ("pkg", "pkg.user")]
    assert upward_imports(graph, layers) == ["pkg.low (layer 0) imports pkg.high (layer 1)"]


@pytest.mark.parametrize(
    "name, layer",
    [
        ("spectrallab.methods.base", 2),
        ("spectrallab.methods.lora", 3),
        ("spectrallab.methods", 3),
        ("spectrallab.tasks.digits", 6),
        ("spectrallab", len(LAYERS) - 1),
    ],
)
def test_an_exact_entry_wins_over_a_pattern(name, layer):
    assert layer_of(name) == layer
