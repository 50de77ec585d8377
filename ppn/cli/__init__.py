"""The ``ppn`` console script: the registry of command families and the error every command raises.

``CommandError`` is public so that command families in other packages (genesis, psp) report a
failure as one sentence with a documented exit status (RFC-NOTES §1.4).
"""

from __future__ import annotations

from ._main import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FAMILIES,
    CommandError,
    build_parser,
    main,
)

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FAMILIES",
    "CommandError",
    "build_parser",
    "main",
]
