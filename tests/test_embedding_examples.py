"""The README's Embedding examples are examples/embed_trio.py and examples/embed_asyncio.py,
verbatim, and both run: each serves a new vault on loopback and queries it (issue 20)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def embedding_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### 7. Embedding") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_blocks_are_the_example_files() -> None:
    files = [(ROOT / "examples" / n).read_text() for n in ("embed_trio.py", "embed_asyncio.py")]
    assert embedding_blocks() == files


@pytest.mark.parametrize("name", ["embed_trio.py", "embed_asyncio.py"])
def test_example_runs(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), str(tmp_path / "vault")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert (row["name"], row["age"], row["_seq"]) == ("ada", 36, 1)
