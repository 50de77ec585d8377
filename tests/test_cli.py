"""The ``ppn`` command frame: lazy family loading stays in step with what families register."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import import_module

import pytest

from ppn.cli import FAMILIES, build_parser, main
from ppn.cli._main import _family_of


@pytest.mark.parametrize("module", sorted(FAMILIES))
def test_family_table_matches_registrations(module: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    import_module(module).register(sub)
    assert tuple(sorted(sub.choices)) == tuple(sorted(FAMILIES[module]))


def test_every_command_routes_to_its_family() -> None:
    for module, commands in FAMILIES.items():
        for command in commands:
            assert _family_of([command, "--help"]) == module
    assert _family_of(["--help"]) is None
    assert _family_of(["no-such-command"]) is None
    assert _family_of([]) is None


def test_full_parser_has_every_command() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {c for cs in FAMILIES.values() for c in cs}


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "ppn demo" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ppn", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_command_loads_only_its_family() -> None:
    code = (
        "import sys\n"
        "from ppn.cli import main\n"
        "try:\n    main(['wg', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('psp', 'genesis', 'psp._cli', 'genesis._cli') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_reader_that_stops_reading_gets_no_traceback() -> None:
    """``ppn ... | head``: exit 141 like a C tool killed by SIGPIPE, nothing on stderr."""
    flood = (
        "import sys\n"
        "import ppn.cli._main as cli, ppn.wg._cli as family\n"
        "def _show(args):\n"
        "    for _ in range(200_000):\n"
        "        print('peer: ' + 'x' * 60)\n"
        "    return 0\n"
        "family._show = _show\n"
        "sys.exit(cli.main(['wg', 'show']))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", flood], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    assert child.stdout.read(100).startswith(b"peer: ")
    child.stdout.close()  # like head: read a little, then go away
    errors = child.stderr.read()
    assert child.wait(timeout=60) == 141
    assert b"Traceback" not in errors and errors == b""
