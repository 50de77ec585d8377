"""Rules the whole code base follows (ARCHITECTURE §3)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("genesis", "ppn", "psp")
FORBIDDEN_IN_CORES = {"trio", "asyncio", "socket", "subprocess", "time", "random", "anyio"}
# Modules allowed to do I/O: adapters, command glue, process supervision.
IO_PREFIXES = ("_trio", "_asyncio", "_anyio", "_cli", "_io", "__main__")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _is_core(path: Path) -> bool:
    return not any(part.startswith(IO_PREFIXES) for part in path.relative_to(ROOT).parts[1:])


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", [p for p in _modules() if _is_core(p)], ids=str)
def test_core_modules_do_no_io(path: Path) -> None:
    bad = _imported_top_levels(path) & FORBIDDEN_IN_CORES
    assert not bad, f"{path.relative_to(ROOT)} is a sans-IO core but imports {sorted(bad)}"


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    offender = tmp_path / "x.py"
    offender.write_text("import trio\nfrom time import monotonic\n")
    assert _imported_top_levels(offender) & FORBIDDEN_IN_CORES == {"trio", "time"}


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_are_typed_and_curated(package: str) -> None:
    assert (ROOT / package / "py.typed").exists()
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert exported, f"{package}/__init__.py must define __all__"
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ names {name!r}, which does not exist"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package: str) -> None:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
