"""Every ``--help`` that lists exit statuses lists 130, interrupted, and Ctrl-C before a command's
handler runs is that same one line (RFC-NOTES §1.4)."""

from __future__ import annotations

import argparse
from typing import NoReturn

import pytest

from ppn.cli._main import build_parser


def _parsers(
    parser: argparse.ArgumentParser, path: str
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_each_epilog_listing_exit_statuses_lists_130() -> None:
    listing = [
        (path, parser.epilog or "")
        for path, parser in _parsers(build_parser(), "ppn")
        if "exit status" in (parser.epilog or "")
    ]
    # The walk must reach the families' epilogs, or the check below passes vacuously.
    assert {"ppn join", "ppn up", "ppn wg sync", "ppn service"} <= {p for p, _ in listing}
    missing = [path for path, epilog in listing if "130 interrupted" not in epilog]
    assert not missing, missing


def test_ctrl_c_before_the_handler_runs_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the parser is built (command families import, ppn.toml loads): no traceback."""
    from ppn.cli import _main

    def interrupted(*_args: object, **_kwargs: object) -> NoReturn:
        raise KeyboardInterrupt

    monkeypatch.setattr(_main, "build_parser", interrupted)
    assert _main.main(["status"]) == 130
    assert capsys.readouterr().err.strip() == "ppn: interrupted"
