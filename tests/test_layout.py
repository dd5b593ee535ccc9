"""The package layering of DESIGN.md, checked on the source: imports run one way,
``runtime`` <- ``compat`` <- ``callbacks``, and only the composition root (runtime/cli.py)
imports every package. A new upward import fails here, naming the module and the line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> busloop packages it must not import (at module level or inside functions).
FORBIDDEN = {
    "runtime": {"callbacks", "compat", "benchmarks"},
    "compat": {"callbacks", "benchmarks"},
    "callbacks": {"benchmarks"},
}
COMPOSITION_ROOT = ROOT / "runtime" / "cli.py"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) for every import statement in the file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path in _modules(package)
        if path != COMPOSITION_ROOT
        for line, imported in _imports(path)
        if imported in FORBIDDEN[package]
    ]
    assert not upward, "imports against the layering (runtime <- compat <- callbacks):\n" + "\n".join(upward)


def test_the_cli_is_the_composition_root() -> None:
    """The CLI is where the packages meet: it imports callbacks (and benchmarks for `bench`)."""
    imported = {name for _, name in _imports(COMPOSITION_ROOT)}
    assert {"runtime", "callbacks", "benchmarks"} <= imported


def test_the_registry_depends_on_no_callback_package() -> None:
    """Both compat and callbacks register into runtime.registry, so it imports neither,
    and nothing of the runtime beyond its config/name helpers."""
    busloop = {"runtime", "callbacks", "compat", "benchmarks"}
    imported = {
        name for _, name in _imports(ROOT / "runtime" / "registry.py") if name in busloop
    }
    assert imported <= {"runtime"}
    from runtime import registry

    source = (ROOT / "runtime" / "registry.py").read_text(encoding="utf-8")
    assert "from runtime.loop" not in source and "from runtime.bus" not in source
    assert registry.CALLBACKS is __import__("callbacks").CALLBACKS


def test_compat_callbacks_register_without_the_callbacks_package() -> None:
    """compat registers its Lightning callbacks on import, in a process that never imports
    callbacks (Lightning-layer users get them without the luxonis layer)."""
    import subprocess
    import sys

    code = (
        "import sys, compat\n"
        "from runtime.registry import CALLBACKS\n"
        "assert 'callbacks' not in sys.modules, 'compat imported callbacks'\n"
        "assert CALLBACKS['ModelCheckpoint'] is compat.ModelCheckpoint\n"
        "assert CALLBACKS['GradientAccumulationScheduler'] is compat.GradientAccumulationScheduler\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
