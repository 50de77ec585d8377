"""Every ``--help`` that lists exit statuses lists 130, interrupted (RFC-NOTES §1.4)."""

from __future__ import annotations

import argparse

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
