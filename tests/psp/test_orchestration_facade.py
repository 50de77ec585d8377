"""The aggregation API's shape: ``import psp`` leaves aggregation (and trio) unloaded; the
``psp.aggregation`` facade resolves every name it lists, lazily; the old names on ``psp`` are the
same objects; the server's ``fanout`` choice is explicit; the epoll fan-out reaches the rest
through public names only."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

import psp
import psp.aggregation
from psp.aggregation import VaultPool
from psp.aggregation._trio_exchange import fan_out_tasks
from psp.aggregation._trio_server import EPOLL_AVAILABLE, fan_out_strategy, serve_orchestration

AGGREGATION = Path(psp.aggregation.__file__).parent


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_import_psp_loads_no_aggregation_and_no_event_loop() -> None:
    loaded = _loaded_after("import psp")
    assert not {m for m in loaded if m.startswith("psp.aggregation")}
    assert not loaded & {"trio", "asyncio"}


def test_the_facade_loads_only_what_is_asked_for() -> None:
    loaded = _loaded_after("import psp.aggregation as a; a.Mode")
    assert "psp.aggregation._merge" in loaded
    assert not {m for m in loaded if m.startswith("psp.aggregation._trio")}
    assert "trio" not in loaded
    loaded = _loaded_after("import psp.aggregation as a; a.OrchestrationClient")
    assert "psp.aggregation._trio_client" in loaded
    assert "psp.aggregation._trio_server" not in loaded


def test_every_listed_name_resolves() -> None:
    lazy: dict[str, str] = psp.aggregation._LAZY  # type: ignore[attr-defined]
    assert sorted(psp.aggregation.__all__) == sorted(lazy)
    for name in psp.aggregation.__all__:
        home = import_module(f"psp.aggregation.{lazy[name]}")
        assert name in home.__all__  # each is public where it lives
        assert getattr(psp.aggregation, name) is getattr(home, name)
    with pytest.raises(AttributeError):
        psp.aggregation.no_such_name  # noqa: B018


def test_old_names_on_psp_are_the_facade_objects() -> None:
    for name in (
        "AggregateCursor",
        "Aggregation",
        "AggregatorConnection",
        "Mode",
        "OrchestrationClientConnection",
        "TargetStatus",
        "VaultAddress",
        "VaultStatus",
        "plan_targets",
    ):
        assert name in psp.__all__
        assert getattr(psp, name) is getattr(psp.aggregation, name)
    with pytest.raises(AttributeError):
        psp.no_such_name  # noqa: B018


async def _connect(host: str, port: int) -> object:
    raise AssertionError("never called")


def test_fanout_is_chosen_explicitly() -> None:
    plain = VaultPool()
    injected = VaultPool(connect=_connect)  # type: ignore[arg-type]
    assert plain.plain_tcp and not injected.plain_tcp
    assert fan_out_strategy("tasks", plain) is fan_out_tasks
    # Epoll opens raw sockets itself: a pool with its own connector always runs on tasks.
    assert fan_out_strategy("epoll", injected) is fan_out_tasks
    if EPOLL_AVAILABLE:
        from psp.aggregation._trio_epoll import fan_out

        assert fan_out_strategy("epoll", plain) is fan_out
    with pytest.raises(ValueError, match="fanout"):
        fan_out_strategy("threads", plain)  # type: ignore[arg-type]


async def test_a_bad_fanout_fails_before_listening() -> None:
    with pytest.raises(ValueError, match="fanout"):
        await serve_orchestration("127.0.0.1", 0, fanout="select")  # type: ignore[arg-type]


def test_the_epoll_fan_out_imports_no_private_names() -> None:
    tree = ast.parse((AGGREGATION / "_trio_epoll.py").read_text())
    imported = [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level
        for alias in node.names
    ]
    assert imported, "the parse found the imports"
    assert [(m, n) for m, n in imported if n.startswith("_")] == []
    assert "_trio_server" not in {m for m, _ in imported}  # the server chooses it, not back
