"""Running a node as a host service (issue 17): systemd units for the long-running roles
(``ppn service``), the configuration file (``ppn config``) and the host check (``ppn doctor``).

The commands are the interface; the modules behind them are private.
"""

from __future__ import annotations

__all__: list[str] = []
