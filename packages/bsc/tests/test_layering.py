"""The facade's layering rules (docs/ARCHITECTURE.md), checked on the source.

- A name that starts with ``_`` is private to the module that defines it: no other module of
  ``bsc`` imports it or reads it as an attribute. (Modules whose file name starts with ``_``
  are private to the package: bsc's own modules import them, and only their public names.)
- ``bsc.engine`` is the only module that imports ``bsc_native.CacheStore``.
- ``bsc_backends`` and ``bsc_encoder`` are leaves: they never import the facade.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bsc
import bsc_backends
import bsc_encoder

SOURCE = Path(bsc.__file__).resolve().parent
MODULES = sorted(SOURCE.rglob("*.py"))
# Private attributes of other libraries the facade reads, each with its reason.
FOREIGN = {
    # openai.Stream keeps the chunk iterator there; CachedOpenAI taps it to store a streamed
    # answer once it has been read to the end, and the SDK has no public hook for that.
    "_iterator",
}


def _name(path: Path) -> str:
    return ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts).removesuffix(".__init__")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_here(tree: ast.Module) -> set[str]:
    """Private names the module itself defines: functions, classes, module and self attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if _is_private(n)}


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _defined_here(tree)
    submodules = {p.stem for p in path.parent.glob("_*.py")} | {p.stem for p in SOURCE.glob("_*.py")}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _is_private(alias.name) and not (node.module == "bsc" and alias.name in submodules):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own or node.attr in FOREIGN:
                continue
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_reads_another_modules_private_names(path: Path) -> None:
    assert _private_uses(path) == []


def test_the_rule_catches_a_private_import_and_a_private_attribute(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from bsc.cache import _secret\n\ndef f(cache):\n    return cache._store\n")
    assert _private_uses(module) == ["m.py:1: from bsc.cache import _secret", "m.py:4: cache._store"]
    module.write_text("class A:\n    def __init__(self):\n        self._store = 1\n\ndef f(a):\n    return a._store\n")
    assert _private_uses(module) == []  # a private attribute of the module's own class


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return out


def test_only_the_engine_module_imports_the_native_store() -> None:
    users = [_name(p) for p in MODULES if "bsc_native.CacheStore" in _imports(p) or "CacheStore(" in p.read_text()]
    assert users == ["bsc.engine"]


@pytest.mark.parametrize("package", [bsc_backends, bsc_encoder], ids=lambda p: p.__name__)
def test_the_leaf_packages_never_import_the_facade(package: object) -> None:
    root = Path(package.__file__).resolve().parent  # type: ignore[attr-defined]
    for path in root.rglob("*.py"):
        facade = {name for name in _imports(path) if name == "bsc" or name.startswith("bsc.")}
        assert not facade, f"{path} imports {facade}"
