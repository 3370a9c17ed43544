"""The package's import graph: layers a reader can see, no circle, lazy imports only for start-up cost.

Walks every module under src/obsctl with :mod:`ast` (module-level imports,
``if TYPE_CHECKING:`` blocks and imports inside functions alike) and fails on

* a module that is in no layer of :data:`LAYERS` (a new module must be placed);
* an import of an obsctl module from a higher layer (``config`` importing
  ``drivers``, anything importing ``cli``);
* a circle between obsctl modules, function-level imports included;
* a function-level import without a comment saying ``start-up`` on its line
  or the line above (the one reason to import late: the OpenTelemetry SDK,
  rich, jinja2 ... must not slow a command that does not need them).

Run against another tree (to show what this test finds on an older commit)::

    python tests/unit/test_import_layers.py /work/main/src/obsctl
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "obsctl"

#: The layers, bottom first. A module may import only from its own layer or a lower one.
#: ``pkg.*`` covers every module of a sub-package (a new collector or driver module).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # errors, paths and stateless helpers: import nothing of obsctl above them
    ("base", ("obsctl", "obsctl.errors", "obsctl.paths", "obsctl.fileutil", "obsctl.procutil", "obsctl.redact",
              "obsctl.mounttable", "obsctl.health", "obsctl.collectors.logtime", "obsctl.topstats",
              "obsctl.bpf", "obsctl.bpf.libbpf")),
    # the files obsctl reads and writes: config schema, TOML, credentials, state files
    ("schema", ("obsctl.config", "obsctl.tomlio", "obsctl.credentials", "obsctl.statefile")),
    # OpenTelemetry instruments, exporters and the collectors that record into them
    ("telemetry", ("obsctl.histograms", "obsctl.instruments", "obsctl.telemetry", "obsctl.scrape", "obsctl.collectors", "obsctl.collectors.*",
                   "obsctl.sources")),
    # the FUSE drivers (their collectors come from the layer below)
    ("drivers", ("obsctl.drivers", "obsctl.drivers.*")),
    # the rules that join the schema and the drivers, and one driver process's plumbing
    ("rules", ("obsctl.mountspec", "obsctl.mountargs", "obsctl.logpump", "obsctl.readiness", "obsctl.unmount")),
    # one mount observed / supervised / converged; the host-wide views
    ("runtime", ("obsctl.observer", "obsctl.background", "obsctl.supervisor", "obsctl.sidecar", "obsctl.engine", "obsctl.inventory",
                 "obsctl.top")),
    # the command line on top: nothing imports it
    ("cli", ("obsctl.cli", "obsctl.systemd_units", "obsctl.__main__")),
]

REASON = "start-up"


def module_name(path: Path, src: Path) -> str:
    """``src/obsctl/collectors/probe.py`` -> ``obsctl.collectors.probe``; a package's __init__ is the package."""
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """Index of ``module``'s layer in :data:`LAYERS`, or None."""
    for index, (_name, patterns) in enumerate(LAYERS):
        if any(module == p or (p.endswith(".*") and fnmatch.fnmatchcase(module, p)) for p in patterns):
            return index
    return None


def _targets(node: ast.Import | ast.ImportFrom, current: str, modules: set[str]) -> list[str]:
    """The obsctl modules an import statement loads (``from obsctl import mounttable`` -> obsctl.mounttable)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    base = node.module or ""
    if node.level:
        package = current.split(".")
        base = ".".join(package[: len(package) - node.level + (1 if current in PACKAGES else 0)]
                        + ([base] if base else []))
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:
            found.append(sub)
        elif base in modules:
            found.append(base)
    return found


PACKAGES: set[str] = set()


def _function_level(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function body."""
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    inner.add(id(sub))
    return inner


def analyse(src: Path) -> list[str]:
    """Every problem of the tree at ``src`` (the ``obsctl`` package directory), as lines."""
    files = sorted(src.rglob("*.py"))
    modules = {module_name(f, src): f for f in files}
    PACKAGES.clear()
    PACKAGES.update(module_name(f, src) for f in files if f.name == "__init__.py")
    problems: list[str] = []
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        if layer_of(module) is None:
            problems.append(f"{module}: in no layer of LAYERS (tests/unit/test_import_layers.py): place it")
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text, str(path))
        inner = _function_level(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            where = f"{path.relative_to(src.parent)}:{node.lineno}"
            if id(node) in inner:
                context = lines[node.lineno - 1] + (lines[node.lineno - 2] if node.lineno > 1 else "")
                if REASON not in context:
                    problems.append(f"{where}: function-level import without a '# {REASON} ...' reason comment "
                                    f"on its line or the line above: {lines[node.lineno - 1].strip()}")
            for target in _targets(node, module, set(modules)):
                if target == module:
                    continue
                edges[module].add(target)
                low, high = layer_of(target), layer_of(module)
                if low is not None and high is not None and low > high:
                    problems.append(f"{where}: {module} (layer {LAYERS[high][0]}) imports {target} "
                                    f"(layer {LAYERS[low][0]}, higher up)")
    problems.extend(f"import circle: {' -> '.join(cycle)}" for cycle in cycles(edges))
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    found = []
    for component in components:
        members = set(component)
        # walk from the first member inside the component until a module repeats: a readable circle
        path, seen = [component[0]], {component[0]}
        while True:
            nxt = sorted(edges[path[-1]] & members)[0]
            if nxt in seen:
                found.append(path[path.index(nxt):] + [nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return found


def test_layers_hold():
    """No module outside a layer, no import upwards, no circle, no unexplained lazy import."""
    problems = analyse(SRC)
    assert not problems, "\n".join(problems)


def test_the_walk_sees_function_level_imports_and_circles(tmp_path):
    """The checker itself: a circle made only through a function-level import, an upward import,
    an unplaced module and a lazy import without its reason are all reported."""
    pkg = tmp_path / "obsctl"
    (pkg / "drivers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "drivers" / "__init__.py").write_text("def f():\n    from obsctl import config\n")
    (pkg / "config.py").write_text("from obsctl.drivers import f\n")
    (pkg / "newthing.py").write_text("def g():\n    import json  # start-up cost: none really, a test\n")
    problems = analyse(pkg)
    text = "\n".join(problems)
    assert "obsctl.newthing: in no layer" in text
    assert "obsctl.config (layer schema) imports obsctl.drivers (layer drivers, higher up)" in text
    assert "function-level import without" in text and "from obsctl import config" in text
    assert "import circle: obsctl.config -> obsctl.drivers -> obsctl.config" in text
    assert "import json" not in text  # its reason is given


if __name__ == "__main__":
    found = analyse(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC)
    print("\n".join(found) or "import layers hold")
    sys.exit(1 if found else 0)
