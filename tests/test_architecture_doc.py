"""ARCHITECTURE.md stays true: its map names every module and nothing else, the files and
names it cites exist, and every "ARCHITECTURE §N" cited in code or in RFC-NOTES is a section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ARCHITECTURE.md"
PACKAGES = ("genesis", "ppn", "psp")
# Where code may cite the document.
CITING = ("genesis", "ppn", "psp", "tests", "interop", "benchmarks", "examples")


def map_modules(text: str) -> dict[str, set[str]]:
    """Directory (``ppn/wg``) -> module patterns (``_plan``, ``cpace.py``, ``_cpace_*``) named by
    the code block of "## 2. The map"."""
    start = text.index("## 2. The map")
    block = text[text.index("```\n", start) + 4 :]
    block = block[: block.index("```")]
    rooms: dict[str, set[str]] = {}
    top = sub = ""
    for line in block.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if not line.startswith(" "):
            top, sub = tokens[0].rstrip("/"), ""
            tokens = tokens[1:]
        elif tokens[0].endswith("/"):
            sub = tokens[0].rstrip("/")
            tokens = tokens[1:]
        room = f"{top}/{sub}" if sub else top
        names = {t for t in tokens if t.startswith("_") or t.endswith(".py")}
        rooms.setdefault(room, set()).update(names)
    return rooms


def tree_modules(root: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            room = path.parent.relative_to(root).as_posix()
            found.setdefault(room, set()).add(path.name)
    return found


def map_differences(text: str, root: Path) -> list[str]:
    named = map_modules(text)
    actual = tree_modules(root)
    problems: list[str] = []
    for room in sorted(set(named) | set(actual)):
        files = actual.get(room, set())
        covered: set[str] = set()
        for pattern in sorted(named.get(room, set())):
            glob = pattern if pattern.endswith((".py", "*")) else f"{pattern}.py"
            if glob.endswith("*"):
                glob += ".py"
            hits = {f for f in files if Path(f).match(glob)}
            if not hits:
                problems.append(f"the map names {room}/{pattern}, which does not exist")
            covered |= hits
        problems += [f"{room}/{f} is not in the map" for f in sorted(files - covered)]
    return problems


def section_numbers(text: str) -> set[str]:
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.MULTILINE))


def test_the_map_names_every_module_and_nothing_else() -> None:
    assert map_differences(DOC.read_text(), ROOT) == []


def test_the_map_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "ppn" / "wg").mkdir(parents=True)
    for name in ("ppn/wire.py", "ppn/wg/_plan.py", "ppn/wg/_new.py"):
        (tmp_path / name).write_text("")
    for package in ("genesis", "psp"):
        (tmp_path / package).mkdir()
    doc = "## 2. The map\n\n```\nppn/  wire.py _gone\n      wg/  _plan\n```\n"
    assert map_differences(doc, tmp_path) == [
        "the map names ppn/_gone, which does not exist",
        "ppn/wg/_new.py is not in the map",
    ]


def _cited_paths(text: str) -> set[str]:
    """Backticked repository paths (``ppn/wg/_cli.py``, ``tests/kernel/``), without ``:name``."""
    paths = set()
    for quoted in re.findall(r"`([^`\s]+)`", text):
        path = quoted.split(":")[0]
        if (
            "/" in path
            and re.fullmatch(r"[\w./-]+", path)
            and (path.split("/")[0] in CITING or path.endswith((".py", ".md")))
        ):
            paths.add(path)
    return paths


def missing_paths(text: str, root: Path) -> list[str]:
    return sorted(p for p in _cited_paths(text) if not (root / p).exists())


def undefined_names(text: str, root: Path) -> list[str]:
    """``path.py:name`` (or ``path.py:Class.method``) must define ``name`` in that file."""
    wrong = []
    for path, name in re.findall(r"`([\w/]+\.py):([\w.]+)`", text):
        first = name.split(".")[0]
        source = (root / path).read_text() if (root / path).exists() else ""
        if not re.search(rf"^\s*(async def|def|class) {first}\b|^{first}\b\s*[:=]", source, re.M):
            wrong.append(f"{path}:{name}")
    return wrong


def test_every_cited_path_exists() -> None:
    text = DOC.read_text()
    assert len(_cited_paths(text)) > 50  # the flows cite files one by one
    assert missing_paths(text, ROOT) == []


def test_every_cited_name_is_defined_where_it_says() -> None:
    text = DOC.read_text()
    assert len(re.findall(r"`[\w/]+\.py:[\w.]+`", text)) > 20
    assert undefined_names(text, ROOT) == []


def test_path_and_name_checks_can_fail(tmp_path: Path) -> None:
    (tmp_path / "ppn").mkdir()
    (tmp_path / "ppn" / "a.py").write_text("def run():\n    pass\n\nLIMIT = 3\n")
    text = "`ppn/a.py:run` `ppn/a.py:LIMIT` `ppn/a.py:walk` `ppn/b.py` `tests/x/`"
    assert missing_paths(text, tmp_path) == ["ppn/b.py", "tests/x/"]
    assert undefined_names(text, tmp_path) == ["ppn/a.py:walk"]


def citations(root: Path) -> list[tuple[str, str]]:
    found = []
    for top in CITING:
        for path in sorted((root / top).rglob("*.py")):
            for number in re.findall(r"ARCHITECTURE(?:\.md)? §(\d+(?:\.\d+)?)", path.read_text()):
                found.append((path.relative_to(root).as_posix(), number))
    for doc in ("RFC-NOTES.md", "README.md"):
        if (root / doc).exists():
            text = (root / doc).read_text()
            for number in re.findall(r"ARCHITECTURE(?:\.md)?\)? §(\d+(?:\.\d+)?)", text):
                found.append((doc, number))
    return found


def test_every_citation_names_a_section() -> None:
    sections = section_numbers(DOC.read_text())
    found = citations(ROOT)
    assert found, "the code cites ARCHITECTURE somewhere; the scan found nothing"
    assert [(where, n) for where, n in found if n not in sections] == []


@pytest.mark.parametrize("number", ["3", "3.4", "8.2"])
def test_sections_are_read_from_headings(number: str) -> None:
    assert number in section_numbers(DOC.read_text())
    assert "3.99" not in section_numbers(DOC.read_text())


def test_citation_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "ppn").mkdir()
    cite = "ARCHITECTURE §"  # split so that this file itself cites nothing
    (tmp_path / "ppn" / "a.py").write_text(f'"""Why ({cite}3.4), and ({cite}9)."""\n')
    (tmp_path / "RFC-NOTES.md").write_text("see [ARCHITECTURE.md](ARCHITECTURE.md) §7\n")
    found = citations(tmp_path)
    assert found == [("ppn/a.py", "3.4"), ("ppn/a.py", "9"), ("RFC-NOTES.md", "7")]
    assert [n for _, n in found if n not in section_numbers("## 3. C\n### 3.4 E\n")] == ["9", "7"]
