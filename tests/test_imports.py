"""The package's import graph: every module imports in a fresh interpreter, and the intra-package
imports (module level AND inside functions, read statically with ``ast``) form no cycle, so the
layering drawn in docs/architecture.md holds: a lower module never reaches a higher one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = "sde_diffusion"
ROOT = Path(__file__).resolve().parents[1] / PKG


def _modules() -> dict:
    """module name -> file, for every .py file of the package."""
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def import_graph() -> dict:
    """module -> set of package modules it names in an import statement (anywhere in the file).
    ``from X import y`` counts as importing X.y when that is a module, else X; the implicit import of
    parent packages is not counted (every module would otherwise depend on the top-level package)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append(sub if sub in mods else src)
            for t in targets:
                while t and t not in mods and "." in t:  # "pkg.mod.attr" -> "pkg.mod"
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict):
    """One cycle as a list of modules, or None (iterative depth-first search)."""
    state = {}
    for start in sorted(graph):
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path, state[start] = [start], 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_function_level_and_relative_imports():
    g = import_graph()
    assert f"{PKG}.model" in g[f"{PKG}.sampling"]  # module level, relative
    assert f"{PKG}.interop.diffusers_config" in g[f"{PKG}.sde"]  # inside VPSDE.from_diffusers
    assert f"{PKG}.solvers.spec" in g[f"{PKG}.solvers.dpm"]


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(m for m in _modules() if not m.endswith("__main__"))
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                       cwd=ROOT.parent, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
