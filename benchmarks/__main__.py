"""Run every ``benchmarks/bench_*.py`` module's ``main()`` in turn (or the ones named)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks


def run(names: list[str]) -> int:
    found = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    chosen = [n for n in found if not names or n in names or n.removeprefix("bench_") in names]
    if not chosen:
        print(f"no benchmark matches {names}; have: {', '.join(found) or 'none'}", file=sys.stderr)
        return 2
    for name in chosen:
        print(f"== {name}")
        importlib.import_module(f"benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
