"""Rules the whole code base follows (ARCHITECTURE.md, "Conventions").

A *core* is a module that does no I/O: its name has no part starting with ``_io``, ``_trio``,
``_asyncio``, ``_anyio``, ``_cli`` or ``__main__``, and it is not under ``ppn/cli/`` (the
console script). Every other module is an adapter, I/O or command glue. The rules:

* a core imports no event loop, socket, process, thread, database, netlink, clock or randomness
  module, and no adapter, I/O or CLI module of this project; imports are read absolute and
  relative, at the top of the file and inside functions;
* a core does no file I/O (``open``, ``os`` file calls, ``pathlib`` file methods), read from the
  syntax tree;
* importing a core, in a fresh interpreter, leaves the heavy modules out of ``sys.modules``
  (what its imports pull in transitively, which the syntax rules cannot see);
* the module-level import graph has no cycle, within a package or across packages;
* the graph of rooms (each package and subpackage, including imports done lazily inside
  functions) has no cycle either: a lazy import hides a cycle from the interpreter, not from
  the reader. Command glue is left out of that graph: it is the composition root and may reach
  into every room.

Each rule has a test below that feeds it a violation and sees it fail.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("genesis", "ppn", "psp")
# Name parts that make a module an adapter, I/O or command glue.
ADAPTER_PREFIXES = ("_io", "_trio", "_asyncio", "_anyio", "_cli", "__main__")
# Packages that are command glue as a whole.
CLI_PACKAGES = ("ppn.cli",)
# Top-level modules a core must not import.
FORBIDDEN_IN_CORES = frozenset(
    {
        "trio",
        "asyncio",
        "anyio",
        "socket",
        "selectors",
        "subprocess",
        "threading",
        "sqlite3",
        "pyroute2",
        "time",
        "random",
        "shutil",
        "tempfile",
        "prometheus_client",  # metrics are command glue (ppn/cli/_metrics.py, issue 17)
    }
)
# What importing a core must not load. `time`, `os` and `pathlib` are not listed: the
# interpreter loads them itself before any of our code runs (`python -c pass` shows them).
HEAVY = (
    "trio",
    "asyncio",
    "anyio",
    "sqlite3",
    "pyroute2",
    "selectors",
    "subprocess",
    "threading",
    "socket",
    "prometheus_client",
)
# os / os.path functions that touch the file system.
OS_FILE_CALLS = frozenset(
    {
        "open",
        "fdopen",
        "read",
        "write",
        "remove",
        "unlink",
        "rename",
        "renames",
        "replace",
        "listdir",
        "scandir",
        "walk",
        "mkdir",
        "makedirs",
        "rmdir",
        "removedirs",
        "stat",
        "lstat",
        "fstat",
        "chmod",
        "fchmod",
        "chown",
        "fsync",
        "link",
        "symlink",
        "readlink",
        "truncate",
        "ftruncate",
        "access",
        "exists",
        "lexists",
        "isfile",
        "isdir",
        "islink",
        "getsize",
        "getmtime",
        "realpath",
    }
)
# pathlib.Path methods that touch the file system; names other types also use for pure work
# (`replace`, `rename`, `resolve`) are left out rather than guessed at.
PATH_FILE_METHODS = frozenset(
    {
        "read_text",
        "write_text",
        "read_bytes",
        "write_bytes",
        "open",
        "unlink",
        "mkdir",
        "rmdir",
        "touch",
        "iterdir",
        "glob",
        "rglob",
        "exists",
        "is_file",
        "is_dir",
        "is_symlink",
        "stat",
        "lstat",
        "chmod",
        "symlink_to",
        "hardlink_to",
        "samefile",
    }
)


# --- reading the tree -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Import:
    target: str  # absolute dotted name
    line: int
    lazy: bool  # inside a function: runs when called, not when the module is imported
    type_only: bool  # under `if TYPE_CHECKING:`: never runs


@dataclass(frozen=True, kw_only=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def discover(root: Path, packages: Iterable[str]) -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            found[name] = Module(name=name, path=path, is_package=is_package)
    return found


def is_core(name: str) -> bool:
    if any(name == p or name.startswith(p + ".") for p in CLI_PACKAGES):
        return False
    return not any(part.startswith(ADAPTER_PREFIXES) for part in name.split("."))


def is_command_glue(name: str) -> bool:
    if any(name == p or name.startswith(p + ".") for p in CLI_PACKAGES):
        return True
    return any(part.startswith(("_cli", "__main__")) for part in name.split("."))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: Module, level: int, name: str | None) -> str:
    parts = module.package.split(".")
    if level > 1:
        if level - 1 >= len(parts):
            raise ValueError(f"{module.name}: relative import beyond the top-level package")
        parts = parts[: len(parts) - (level - 1)]
    base = ".".join(parts)
    return f"{base}.{name}" if name else base


def imports_of(module: Module, known: Mapping[str, Module] | None = None) -> list[Import]:
    """Every import in ``module``, resolved to absolute names.

    ``from pkg import name`` yields ``pkg`` and, when ``pkg.name`` is a module of the tree (or
    a relative import, where it can only be one of ours or an attribute), ``pkg.name`` too.
    """
    tree = ast.parse(module.path.read_text(), filename=str(module.path))
    found: list[Import] = []

    def add(target: str, node: ast.Import | ast.ImportFrom, lazy: bool, type_only: bool) -> None:
        found.append(Import(target=target, line=node.lineno, lazy=lazy, type_only=type_only))

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, lazy, type_only)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module) if node.level else node.module or ""
            add(base, node, lazy, type_only)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and known is not None and sub in known:
                    add(sub, node, lazy, type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, lazy, True)
            for child in node.orelse:
                visit(child, lazy, type_only)
            return
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for inner_node in ast.iter_child_nodes(node):
            visit(inner_node, inner, type_only)

    visit(tree, False, False)
    return found


def _own_descendant(module: Module, target: str) -> bool:
    return module.is_package and target.startswith(module.name + ".")


def import_violations(module: Module, known: Mapping[str, Module] | None = None) -> list[str]:
    """Imports a core may not make: forbidden modules, and adapters, I/O or CLI modules.

    A package's ``__init__`` (a facade) may name its own adapters lazily or for type checking
    only: that is how it re-exports them without loading them.
    """
    ours = set(PACKAGES) | {name.split(".")[0] for name in known or ()}
    bad = []
    for imp in imports_of(module, known):
        top = imp.target.split(".")[0]
        if top in FORBIDDEN_IN_CORES:
            bad.append(f"line {imp.line}: imports {imp.target}")
        elif not is_core(imp.target) and top in ours:
            if (imp.lazy or imp.type_only) and _own_descendant(module, imp.target):
                continue
            bad.append(f"line {imp.line}: imports the adapter/I-O/CLI module {imp.target}")
    return bad


def file_io_calls(path: Path) -> list[str]:
    """File-system calls in ``path``: ``open()``, ``os``/``os.path`` file functions (also
    imported by name), and ``pathlib`` file methods on any object."""
    tree = ast.parse(path.read_text(), filename=str(path))
    from_os: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "os.path", "io"):
            from_os.update(a.asname or a.name for a in node.names if a.name in OS_FILE_CALLS)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        what = None
        if isinstance(func, ast.Name) and (func.id == "open" or func.id in from_os):
            what = func.id
        elif isinstance(func, ast.Attribute):
            owner = ast.unparse(func.value)
            if owner in ("os", "os.path", "io") and func.attr in OS_FILE_CALLS:
                what = f"{owner}.{func.attr}"
            elif func.attr in PATH_FILE_METHODS and owner not in ("os", "os.path", "io"):
                what = f".{func.attr}()"
        if what:
            found.append(f"line {node.lineno}: {what}")
    return found


def _sccs(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        result.append(sorted(component))
    return result


def _a_cycle(graph: Mapping[str, Iterable[str]], component: list[str]) -> list[str]:
    """One concrete cycle through the component's first member, for the message."""
    members = set(component)
    start = component[0]
    path = [start]
    seen = {start}
    while True:
        nxt = sorted(n for n in graph.get(path[-1], ()) if n in members)
        if start in nxt and (len(path) > 1 or path[-1] == start):
            return [*path, start]
        step = next((n for n in nxt if n not in seen), None)
        if step is None:  # walk back: take any member leading home
            return [*path, "...", start]
        path.append(step)
        seen.add(step)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_graph(modules: Mapping[str, Module], *, lazy: bool = False) -> dict[str, set[str]]:
    """Imports between modules of the tree: module-level ones (what runs at import time), and
    with ``lazy`` also those inside functions.

    Importing ``a.b.c`` also runs ``a`` and ``a.b``; a module's own enclosing packages are left
    out, since they are always initialised (or initialising) before the module itself runs (so
    a facade that imports its own submodules lazily makes no cycle).
    """
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, module in modules.items():
        own = set(_ancestors(name))
        for imp in imports_of(module, modules):
            if imp.type_only or (imp.lazy and not lazy):
                continue
            for target in (*_ancestors(imp.target), imp.target):
                if target in modules and target != name and target not in own:
                    graph[name].add(target)
    return graph


def room_of(name: str, modules: Mapping[str, Module]) -> str:
    """The package or subpackage a module lives in (a package is its own room)."""
    module = modules.get(name)
    if module is not None:
        return module.package
    return name.rpartition(".")[0] if name.rpartition(".")[0] in modules else name


def room_graph(modules: Mapping[str, Module]) -> dict[str, set[str]]:
    """Imports between rooms, lazy ones included; command glue is left out (see the docstring
    of this file)."""
    graph: dict[str, set[str]] = {}
    for name, module in modules.items():
        if is_command_glue(name):
            continue  # the composition root
        room = room_of(name, modules)
        graph.setdefault(room, set())
        for imp in imports_of(module, modules):
            if imp.type_only or imp.target not in modules:
                continue
            if is_command_glue(imp.target):
                continue
            other = room_of(imp.target, modules)
            if other != room and not room.startswith(other + "."):
                graph[room].add(other)
    return graph


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[str]:
    return [" -> ".join(_a_cycle(graph, c)) for c in _sccs(graph)]


HEAVY_PROBE = textwrap.dedent(
    """
    import importlib, json, os, sys
    heavy, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    preloaded = {m for m in heavy if m in sys.modules}
    results = {}
    for name in names:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a fresh copy of this bare interpreter per module
            os.close(r)
            try:
                importlib.import_module(name)
                out = {"loaded": sorted(m for m in heavy if m in sys.modules and m not in preloaded)}
            except BaseException as exc:
                out = {"error": repr(exc)}
            os.write(w, json.dumps(out).encode())
            os._exit(0)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        results[name] = json.loads(b"".join(chunks) or b'{"error": "child died"}')
    print(json.dumps({"preloaded": sorted(preloaded), "results": results}))
    """
)


def heavy_imports(root: Path, names: list[str]) -> dict[str, object]:
    """For each module name: the heavy modules a fresh interpreter holds after importing it."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", HEAVY_PROBE, json.dumps(list(HEAVY)), json.dumps(names)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# --- the rules on this tree -----------------------------------------------------------------

MODULES = discover(ROOT, PACKAGES)
CORES = sorted(name for name in MODULES if is_core(name))


@pytest.mark.parametrize("name", CORES)
def test_cores_import_no_io_adapter_or_cli(name: str) -> None:
    bad = import_violations(MODULES[name], MODULES)
    assert not bad, f"{MODULES[name].path.relative_to(ROOT)} is a sans-IO core but: {bad}"


@pytest.mark.parametrize("name", CORES)
def test_cores_do_no_file_io(name: str) -> None:
    bad = file_io_calls(MODULES[name].path)
    assert not bad, f"{MODULES[name].path.relative_to(ROOT)} is a sans-IO core but calls {bad}"


@pytest.fixture(scope="module")
def heavy_report() -> dict[str, object]:
    return heavy_imports(ROOT, CORES)


@pytest.mark.parametrize("name", CORES)
def test_importing_a_core_loads_no_event_loop_database_or_netlink(
    name: str, heavy_report: dict[str, object]
) -> None:
    results = heavy_report["results"]
    assert isinstance(results, dict)
    result = results[name]
    assert "error" not in result, f"importing {name} failed: {result['error']}"
    assert not result["loaded"], f"importing the core {name} loads {result['loaded']}"


def test_nothing_heavy_is_preloaded_by_the_interpreter(heavy_report: dict[str, object]) -> None:
    # Otherwise the probe above could not see that module at all.
    assert heavy_report["preloaded"] == []


def test_module_level_imports_have_no_cycle() -> None:
    cycles = import_cycles(module_graph(MODULES))
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_modules_have_no_cycle_even_through_lazy_imports() -> None:
    # Two modules that import each other, one of them inside a function, work only because of
    # the order things happen to run in; they are one module split in two.
    cycles = import_cycles(module_graph(MODULES, lazy=True))
    assert not cycles, "import cycles through lazy imports:\n" + "\n".join(cycles)


def test_rooms_have_no_cycle_even_through_lazy_imports() -> None:
    cycles = import_cycles(room_graph(MODULES))
    assert not cycles, "cycles between packages (lazy imports included):\n" + "\n".join(cycles)


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


# --- each rule catches a violation ----------------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return discover(root, sorted(d.name for d in root.iterdir() if (d / "__init__.py").exists()))


def test_core_is_told_from_adapters() -> None:
    assert is_core("ppn.wg._model") and is_core("ppn.wg") and is_core("genesis._core")
    for name in ("ppn.wg._io_kernel", "psp._trio", "psp.aggregation._trio_epoll", "ppn.__main__"):
        assert not is_core(name), name
    assert not is_core("ppn.cli") and not is_core("ppn.cli._main")
    assert not is_core("pkg._io_x.inner")


def test_rule_catches_forbidden_imports_absolute_relative_and_lazy(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/_io_store.py": "",
            "pkg/_cli.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/core.py": """
                import trio
                from time import monotonic
                from ._io_local import thing
                from .. import _io_store
                from .._cli import main

                def later():
                    import sqlite3
                    from pyroute2 import WireGuard
                    from ppn.cli import CommandError
            """,
        },
    )
    bad = import_violations(modules["pkg.sub.core"], modules)
    joined = "\n".join(bad)
    for expected in (
        "imports trio",
        "imports time",
        "pkg.sub._io_local",
        "pkg._io_store",
        "pkg._cli",
        "imports sqlite3",
        "imports pyroute2",
    ):
        assert expected in joined, (expected, bad)
    # ppn.cli is a CLI package even though no part of its name says so.
    assert any("ppn.cli" in b for b in bad), bad


def test_facade_may_name_its_own_adapters_lazily_only(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "pkg/__init__.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from ._io_store import Store
                def __getattr__(name):
                    from ._io_store import Store
                    return Store
            """,
            "pkg/_io_store.py": "",
            "other/__init__.py": "from pkg._io_store import Store\n",
        },
    )
    assert import_violations(modules["pkg"], modules) == []
    assert import_violations(modules["other"], modules) != []
    eager = _tree(tmp_path / "b", {"pkg/__init__.py": "from ._io_store import Store\n"})
    assert import_violations(eager["pkg"], eager) != []


def test_rule_catches_file_io(tmp_path: Path) -> None:
    offender = tmp_path / "x.py"
    offender.write_text(
        textwrap.dedent(
            """
            import os
            from os import replace as swap
            from pathlib import Path

            def f(p: Path, text: str) -> None:
                open(p)
                os.makedirs(p)
                os.path.exists(p)
                swap(p, p)
                p.write_text(text)
                Path("x").read_bytes()
                text.replace("a", "b")  # str.replace: not file I/O
            """
        )
    )
    found = "\n".join(file_io_calls(offender))
    for expected in ("open", "os.makedirs", "os.path.exists", "swap", ".write_text()"):
        assert expected in found, (expected, found)
    assert ".read_bytes()" in found
    assert "replace" not in found.replace("swap", "")


def test_probe_sees_a_core_that_loads_a_heavy_module(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/clean.py": "import json\n",
            "pkg/hidden.py": "from . import helper\n",  # heavy only through another module
            "pkg/helper.py": "import sqlite3, threading\n",
        },
    )
    report = heavy_imports(tmp_path, ["pkg.clean", "pkg.hidden", "pkg.missing"])
    results = report["results"]
    assert isinstance(results, dict)
    assert results["pkg.clean"] == {"loaded": []}
    assert results["pkg.hidden"] == {"loaded": ["sqlite3", "threading"]}
    assert "error" in results["pkg.missing"]


def test_rule_catches_module_level_cycles_relative_and_across_packages(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "a/__init__.py": "",
            "a/one.py": "from . import two\n",
            "a/two.py": "from .one import x\n",
            "a/lazy.py": "def f():\n    from . import lazy2\n",
            "a/lazy2.py": "from . import lazy\n",
            "a/facade_user.py": "from a.sub import thing\n",
            "a/sub/__init__.py": "from .inner import thing\n",
            "a/sub/inner.py": "from . import helper\n",  # its own package: no cycle
            "a/sub/helper.py": "",
            "b/__init__.py": "",
            "b/x.py": "import c.y\n",
            "c/__init__.py": "",
            "c/y.py": "from b import x\n",
        },
    )
    cycles = import_cycles(module_graph(modules))
    assert "a.one -> a.two -> a.one" in cycles, cycles
    assert "b.x -> c.y -> b.x" in cycles, cycles
    assert len(cycles) == 2, cycles  # the lazy pair and the facade are not module-level cycles
    lazy = import_cycles(module_graph(modules, lazy=True))
    assert "a.lazy -> a.lazy2 -> a.lazy" in lazy, lazy
    assert len(lazy) == 3, lazy  # a package importing its own submodules is still no cycle


def test_rule_catches_a_cycle_between_rooms_hidden_in_a_lazy_import(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "p/__init__.py": "",
            "p/base.py": "",
            "p/mesh/__init__.py": "",
            "p/mesh/_io_state.py": "def load():\n    from g._io_state import load\n",
            "p/mesh/_cli.py": "from g import _cli\n",  # command glue: not counted
            "g/__init__.py": "",
            "g/_io_state.py": "from p import base\n",
            "g/_cli.py": "import p.mesh._io_state\n",
        },
    )
    assert import_cycles(room_graph(modules)) == []  # g -> p (base), p.mesh -> g: layered
    modules = _tree(tmp_path, {"p/base.py": "def f():\n    import g._io_state\n"})
    assert import_cycles(room_graph(modules)) == ["g -> p -> g"]
