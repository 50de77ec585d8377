"""Command registration for this family (see ppn/_cli.py for the conventions)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this family's commands to ``ppn``. Handlers are set with ``set_defaults(handler=...)``."""
