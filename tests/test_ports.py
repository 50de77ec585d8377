"""ppn/ports.py is the only place in code where a default port number is written (RFC-NOTES §3).

Docstrings, comments and example text in help may name a port; code may not: an integer
constant equal to a default port, or a bare ``HOST:PORT`` string ending in one, anywhere but
ppn/ports.py fails this test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ppn import ports

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("genesis", "ppn", "psp")
DEFAULT_PORTS = {getattr(ports, name) for name in ports.__all__}
_HOSTPORT = re.compile(r"^\S*:(\d+)$")


def port_literals(root: Path) -> list[str]:
    """``path:line value`` for every default-port literal in code under ``root``."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if rel == Path("ppn/ports.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Constant):
                    continue
                value = node.value
                if isinstance(value, int) and not isinstance(value, bool):
                    hit = value in DEFAULT_PORTS
                elif isinstance(value, str):
                    m = _HOSTPORT.match(value)
                    hit = m is not None and int(m.group(1)) in DEFAULT_PORTS
                else:
                    hit = False
                if hit:
                    found.append(f"{rel}:{node.lineno} {value!r}")
    return found


def test_default_ports_are_written_only_in_ppn_ports() -> None:
    assert port_literals(ROOT) == []


def test_the_check_sees_a_literal_port(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "ppn" / "x.py").write_text(
        '"""Listens on 9206 (a docstring may say so)."""\n'
        "PORT = 9206\n"
        'LISTEN = "0.0.0.0:9205"\n'
        'EXAMPLE = "example: ppn vault serve --listen 127.0.0.1:9210"\n'
        "OTHER = 8080\n"
    )
    assert port_literals(tmp_path) == ["ppn/x.py:2 9206", "ppn/x.py:3 '0.0.0.0:9205'"]
