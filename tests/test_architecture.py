"""The module graph of hftl has no import cycles.

Every module under hftl/ is parsed with ``ast`` (nothing is imported). Every ``import`` and
``from ... import`` counts, wherever it stands: at module level, inside a function (a lazy import is
still a dependency), under ``if TYPE_CHECKING:``. Relative imports are resolved against the module's
package. The rules for naming the module an import points at:

- ``import hftl.a.b`` is an edge to ``hftl.a.b``;
- ``from hftl.a import b`` is an edge to ``hftl.a.b`` when that is a module, otherwise to ``hftl.a``
  (``b`` is then a name defined in ``hftl/a/__init__.py`` or ``hftl/a.py``);
- importing a submodule also runs its package's ``__init__``, but that is not counted as an edge:
  a package's ``__init__`` may import (or re-export) its own submodules, and a submodule that imports a
  sibling directly (``from hftl.a.sibling import x``) depends on that sibling, not on the package.
  A submodule that imports a name from its own package's ``__init__`` (``from hftl.a import x``) is an
  edge to ``hftl.a``, and so a cycle when that ``__init__`` imports the submodule back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hftl"


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that module ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..a import x
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
    found.discard(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package`` (dotted name) -> the modules of it that it imports."""
    modules = _modules(package)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search in sorted order: the same answer each run)."""
    on_path: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return on_path[on_path.index(nxt):] + [nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        on_path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_sees_lazy_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("def f():\n    from pkg import a  # lazy\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import x\n")
    (pkg / "sub" / "b.py").write_text("x = 1\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import y\n")
    (pkg / "sub" / "c.py").write_text("import pkg.sub.b\nfrom pkg.sub import x\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": {"pkg.sub.b"},
                     "pkg.sub.b": {"pkg.a"}, "pkg.sub.c": {"pkg.sub.b", "pkg.sub"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert "hftl.api" in graph["hftl"] and "hftl.trainer" in graph["hftl.run"]  # lazy imports are seen
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_folder_of_the_package_is_installed():
    # pyproject.toml lists the packages (model_cards/ is mapped into hftl): a folder left off the list
    # would be missing from a wheel while an editable install still found it.
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.relative_to(PACKAGE.parent).parts) for p in [PACKAGE, *PACKAGE.rglob("*")]
               if p.is_dir() and p.name != "__pycache__" and "__pycache__" not in p.parts}
    assert set(setuptools["packages"]) == folders | {"hftl.model_cards"}
    assert setuptools["package-dir"] == {"hftl.model_cards": "model_cards"}
    assert (PACKAGE.parent / "model_cards" / "default.md").is_file()


MAX_LINES = 500


def test_every_module_over_500_lines_says_why():
    # A module over MAX_LINES lines either splits along a seam or says at the top of its docstring why it
    # is one module, as "(Over 500 lines: ...)".
    silent = []
    for name, path in _modules(PACKAGE).items():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_LINES and f"Over {MAX_LINES} lines" not in (ast.get_docstring(ast.parse(text)) or ""):
            silent.append(f"{name} ({lines} lines)")
    assert not silent, "over 500 lines without a reason in the module docstring: " + ", ".join(silent)
