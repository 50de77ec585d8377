"""The README's tour, run as written: the README cannot say what main does not do (issue 20).

A tour block is a ```sh fence right after ``<!-- tour -->`` (or ``<!-- tour netns -->`` for the
blocks that build network namespaces and need root). The fence after ``<!-- output -->`` that
follows a tour block is what that block prints (stdout and stderr together); a tour block with no
output block must print nothing. All tour blocks run literally, in order, in one ``bash``, which
starts in a scratch copy of the clone's layout (``.venv`` and ``examples`` as links), so the
first block's ``. .venv/bin/activate`` is what puts ``ppn`` on PATH. As root the shell runs in a
network namespace of its own, so the tour's fixed ports (the defaults: 9203, 9210–9212, 9220)
meet nothing else; otherwise it runs on the host's loopback. Services the tour starts in the
background it stops itself; whatever is left when the test ends is killed by process group.

How an output block is matched (``expected_pattern``): line by line and whole, with runs of
spaces as any run of spaces and trailing spaces ignored. What varies from run to run matches
anything of its kind: keys (44-character base64), short vault ids (10 base64 characters), hex ids
(8+ hex digits with a digit, alone or after a letter prefix as in ``wg3120892ee``), join codes,
comparison strings, numbers with a decimal point, numbers with a unit (``2s ago``, ``348 B``,
``3000/3000 MB``), 5-digit ports, paths under /tmp, and the ``_ts`` column's Unix times (as
hex-like digit runs). ``…`` matches any text within a line, and a line holding only ``…`` any
number of lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# A guard against a hung block, not a speed bound: each scenario waits on its own conditions with
# its own deadlines. The fleet block (interop.fleet: 9 steps, one of them a 30 s eviction) took
# 62 s on an idle box and 92-96 s at load ~12, which left the old 120 s guard a 25 % margin and
# failed the tour on CI's loaded box while the scenario itself was still passing.
BLOCK_TIMEOUT = 600.0


@dataclass(frozen=True, kw_only=True)
class TourBlock:
    line: int  # of the fence in README.md, for messages
    netns: bool
    code: str
    output: str | None  # None: must print nothing


_MARK = re.compile(r"<!--\s*(tour(?:\s+netns)?|output)\s*-->")


def extract(text: str) -> list[TourBlock]:
    """The tour blocks of a README text, each with the output block that follows it."""
    lines = text.splitlines()
    blocks: list[TourBlock] = []
    i = 0
    while i < len(lines):
        mark = _MARK.fullmatch(lines[i].strip())
        if mark is None:
            i += 1
            continue
        kind = mark.group(1)
        j = i + 1
        if j >= len(lines) or not lines[j].startswith("```"):
            raise ValueError(f"README line {i + 1}: <!-- {kind} --> is not right before a fence")
        if kind != "output" and lines[j].strip() != "```sh":
            raise ValueError(f"README line {j + 1}: a tour block is a ```sh fence")
        end = next((k for k in range(j + 1, len(lines)) if lines[k].startswith("```")), None)
        if end is None:
            raise ValueError(f"README line {j + 1}: the fence is never closed")
        body = "\n".join(lines[j + 1 : end]) + "\n"
        if kind == "output":
            if not blocks or blocks[-1].output is not None:
                raise ValueError(f"README line {i + 1}: an output block follows no tour block")
            last = blocks.pop()
            blocks.append(TourBlock(line=last.line, netns=last.netns, code=last.code, output=body))
        else:
            blocks.append(TourBlock(line=j + 1, netns=kind != "tour", code=body, output=None))
        i = end + 1
    return blocks


# What varies, most specific first. Each class: (pattern in the README, pattern it becomes).
_B64 = r"[A-Za-z0-9+/]"
_VARYING: list[tuple[str, str | None]] = [
    (r"…", r".*?"),
    # A join window's number is random (RFC-NOTES §5.7).
    (r"(?<=window )\d+\b", r"\d+"),
    # An IPv4 address stays itself (None: literal), so the decimal class below cannot take it.
    (r"\b\d{1,3}(?:\.\d{1,3}){3}\b", None),
    (_B64 + r"{43}=", _B64 + r"{43}="),
    (r"pspagg1\.[A-Za-z0-9_-]+", r"pspagg1\.[A-Za-z0-9_-]+"),
    (r"\b\d{1,3}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]\b", r"\d{1,3}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]"),
    (r"/tmp/[^\s)]+", r"/[^\s)]+"),
    (r"\b\d+/\d+ MB\b", r"\d+/\d+ MB"),
    (r"\b\d+(?:\.\d+)? ?(?:s ago|s|ms|B)\b", r"\d+(?:\.\d+)? ?(?:s ago|s|ms|B)"),
    (r"\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b", r"[0-9a-f]+"),
    (r"\b([a-z]+)(?=[0-9a-f]*\d)[0-9a-f]{6,}\b", r"\1[0-9a-f]+"),
    (r"\b\d{3} \d{4}\b", r"\d{3} \d{4}"),
    (r"\b\d+\.\d+\b", r"\d+\.\d+"),
    (r"(?<=:)\d{5}\b", r"\d{1,5}"),
    # A short vault id: 10 base64 characters, at least one of them not a lower-case letter.
    (r"(?<![\w+/])(?=" + _B64 + r"{0,9}[A-Z0-9+/])" + _B64 + r"{10}(?![\w+/])", _B64 + r"{10}"),
]
_VARYING_RE = re.compile("|".join(f"({p})" for p, _ in _VARYING))


def _line_pattern(line: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _VARYING_RE.finditer(line):
        out.append(_literal(line[pos : m.start()]))
        # The first group that took part is the class's outer group (inner ones come after it).
        group = next(i for i, g in enumerate(m.groups()) if g is not None)
        out.append(_replacement(m.group(0), group))
        pos = m.end()
    out.append(_literal(line[pos:]))
    return "".join(out)


def _replacement(text: str, group: int) -> str:
    """The pattern of the class whose outer group has this index (counting inner groups)."""
    g = 0
    for pattern, replacement in _VARYING:
        if g == group:
            if replacement is None:
                return re.escape(text)
            if "\\1" in replacement:  # keep the class's literal prefix (wg3120892ee: 'wg')
                inner = re.fullmatch(pattern, text)
                assert inner is not None
                return replacement.replace("\\1", re.escape(inner.group(1)))
            return replacement
        g += 1 + re.compile(pattern).groups
    raise AssertionError(f"no class has group {group}")


def _literal(text: str) -> str:
    """Text as itself, but any run of spaces as any run of spaces (table columns move)."""
    return "".join(
        " +" if part.startswith(" ") else re.escape(part)
        for part in re.split(r"( +)", text)
        if part
    )


def expected_pattern(expected: str) -> re.Pattern[str]:
    """A regex that a block's whole output (normalised by :func:`normalise`) must match."""
    parts = []
    for line in normalise(expected).split("\n")[:-1]:
        if line.strip() == "…":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(_line_pattern(line) + r"\n")
    return re.compile("".join(parts))


def normalise(text: str) -> str:
    """Trailing spaces off every line; leading and trailing blank lines off; one final newline."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def matches(expected: str | None, actual: str) -> bool:
    if expected is None:
        return normalise(actual) == ""
    return expected_pattern(expected).fullmatch(normalise(actual)) is not None


# --- the matcher's own checks (each must be able to fail) ----------------------------------------


def test_matcher_accepts_what_varies_and_nothing_else() -> None:
    expected = (
        "vault acme (pzBtB59CoB1da6obfI+/z4IYWX0oXnSEfPz66fDJFxA=) listening on 127.0.0.1:9210\n"
        "  [alpha] join window 1 open on 127.0.0.1:37833; code: 1-ZG1Z-9HFJ-M\n"
        "mesh a771de3b · ppn51246fea4 · done in 1.2 s · 3000/3000 MB · 2s ago\n"
        "pzBtB59CoB  127.0.0.1:9210  ok  2  4\n"
        "…\n"
        "exit 42\n"
    )
    ok = (
        "vault acme (AAAAB59CoB1da6obfI+/z4IYWX0oXnSEfPz66fDJFxA=) listening on 127.0.0.1:9210\n"
        "  [alpha] join window 1 open on 127.0.0.1:40001; code: 1-AB3C-DE4F-G\n"
        "mesh 0b1c2d3e · ppn7a2b3c4d5 · done in 13.0 s · 2999/3000 MB · 12s ago\n"
        "Zz9+/aaaaa    127.0.0.1:9210     ok  2  4\n"
        "some\nlines\n"
        "exit 42\n"
    )
    assert matches(expected, ok)
    for wrong in (
        ok.replace("listening on 127.0.0.1:9210", "listening on 127.0.0.1:9211"),
        ok.replace("ok  2  4", "ok  3  4"),
        ok.replace("exit 42", "exit 43"),
        ok.replace("acme", "acne"),
        ok + "one more line\n",
        ok.replace("mesh", "mash"),
    ):
        assert not matches(expected, wrong), wrong
    assert matches(None, "\n  \n") and not matches(None, "ppn: command not found\n")


def test_extract_pairs_blocks_with_outputs() -> None:
    text = (
        "<!-- tour -->\n```sh\necho a\n```\n<!-- output -->\n```text\na\n```\n"
        "prose\n<!-- tour netns -->\n```sh\ntrue\n```\n"
    )
    first, second = extract(text)
    assert (first.code, first.output, first.netns) == ("echo a\n", "a\n", False)
    assert (second.code, second.output, second.netns) == ("true\n", None, True)
    with pytest.raises(ValueError):
        extract("<!-- output -->\n```text\na\n```\n")
    with pytest.raises(ValueError):
        extract("<!-- tour -->\n```python\npass\n```\n")


def test_readme_has_a_tour() -> None:
    blocks = extract(README.read_text())
    assert sum(not b.netns for b in blocks) >= 10 and sum(b.netns for b in blocks) == 3
    # The first block is the one that puts ppn on PATH; the README says so before the tour.
    assert blocks[0].code.startswith(". .venv/bin/activate")


# --- running the tour ------------------------------------------------------------------------------


class TourShell:
    """One bash running the tour's blocks in order; each block's output goes to its own file."""

    def __init__(self, workdir: Path, *, own_netns: bool) -> None:
        clone = workdir / "clone"
        clone.mkdir()
        (clone / ".venv").symlink_to(Path(sys.prefix))
        (clone / "examples").symlink_to(ROOT / "examples")
        (clone / "interop").symlink_to(ROOT / "interop")
        self.dir = workdir
        env = {
            **os.environ,
            "TMPDIR": str(workdir),
            # As on a terminal: a command's stdout and stderr lines interleave as printed.
            "PYTHONUNBUFFERED": "1",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin").replace(
                str(Path(sys.prefix) / "bin") + os.pathsep, ""
            ),
        }
        env.pop("VIRTUAL_ENV", None)
        argv = ["bash", "--norc", "--noprofile"]
        if own_netns:
            argv = ["unshare", "--net", "sh", "-c", "ip link set lo up && exec " + " ".join(argv)]
        self.proc = subprocess.Popen(
            argv,
            cwd=clone,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        if os.geteuid() == 0 and shutil.which("sudo") is None:
            # Root without sudo (CI containers): the README's 'sudo X' is then just X.
            self._send('sudo() { "$@"; }\n')
        self.count = 0

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def run(self, block: TourBlock) -> str:
        self.count += 1
        script = self.dir / f"block{self.count}.sh"
        out = self.dir / f"block{self.count}.out"
        script.write_text(block.code)
        # 'source' keeps variables, functions and background jobs in the one shell; stdin is
        # /dev/null so no command of the tour reads the next ones.
        self._send(f'source {script} < /dev/null > {out} 2>&1; echo "done {self.count}"\n')
        assert self.proc.stdout is not None
        deadline = time.monotonic() + BLOCK_TIMEOUT
        line = self._readline(deadline)
        assert line == f"done {self.count}\n", f"the tour's shell ended: {line!r}"
        return out.read_text()

    def _readline(self, deadline: float) -> str:
        import selectors

        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                raise AssertionError(
                    f"a tour block ran longer than {BLOCK_TIMEOUT:.0f} s; it printed so far:\n"
                    + self._partial_output()
                )
        return self.proc.stdout.readline()

    def _partial_output(self) -> str:
        out = self.dir / f"block{self.count}.out"
        return out.read_text(errors="replace") if out.exists() else "(nothing)"

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Whatever the tour left running (it stops its own services; a failed block may not).
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _own_netns() -> bool:
    return (
        os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("ip") is not None
    )


def _run_tour(tmp_path: Path, blocks: list[TourBlock], *, own_netns: bool) -> None:
    shell = TourShell(tmp_path, own_netns=own_netns)
    try:
        for block in blocks:
            actual = shell.run(block)
            assert matches(block.output, actual), (
                f"README.md line {block.line}: the block\n{block.code}printed\n{actual}\n"
                f"which does not match\n{block.output or '(nothing)'}"
            )
    finally:
        shell.close()


@pytest.mark.slow
def test_readme_tour(tmp_path: Path) -> None:
    """Every tour block that needs no root, in order, as written."""
    blocks = [b for b in extract(README.read_text()) if not b.netns]
    _run_tour(tmp_path, blocks, own_netns=_own_netns())


@pytest.mark.slow
@pytest.mark.netns
def test_readme_tour_netns(tmp_path: Path) -> None:
    """The namespace scenarios the tour shows (WireGuard, the mesh, the whole fleet), after the
    tour's first block, each as written."""
    blocks = extract(README.read_text())
    _run_tour(tmp_path, [blocks[0], *(b for b in blocks if b.netns)], own_netns=False)


@pytest.mark.slow
def test_demo_names_the_wg_quick_file_only_where_it_stays(tmp_path: Path) -> None:
    ppn = [sys.executable, "-m", "ppn", "demo"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    gone = subprocess.run(ppn, capture_output=True, text=True, env=env, timeout=60)
    assert gone.returncode == 0, gone.stderr
    assert "wg-quick" not in gone.stdout and "removed on exit" in gone.stdout
    kept = subprocess.run(
        [*ppn, "--dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60
    )
    assert kept.returncode == 0, kept.stderr
    (path,) = re.findall(r"beta's wg-quick file: (\S+)", kept.stdout)
    assert Path(path).is_file() and "removed on exit" not in kept.stdout


# --- what the tour relies on, fast (the tour itself is slow) ---------------------------------------

_QUERY = ["query", "--key", "k", "--cap", "c", "--vault", "127.0.0.1:9", "--collection", "people"]


@pytest.mark.parametrize("order", [["--order", "-age"], ["--order=-age"], ["--order", "-height"]])
def test_order_takes_a_leading_dash(order: list[str]) -> None:
    from ppn.cli._main import build_parser
    from psp._cli_common import build_query

    args = build_parser().parse_args([*_QUERY, *order, "--limit", "5"])
    query = build_query(args)
    assert query.order == (order[-1].split("=")[-1].lstrip("-"), True) and query.limit == 5


def test_a_mistyped_option_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from ppn.cli._main import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*_QUERY, "-json"])
    assert exc.value.code == 2 and "unrecognized arguments: -json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("expr", "hint"),
    [
        ("age=>3", "did you mean 'age>=3'?"),
        ("age==3", "did you mean 'age=3'?"),
        ("age<=3", "'<=' is not one of them"),
        ("age!=3", "'!=' is not one of them"),
        ("age>3", "no operator"),
        ("age>=", "a range needs a value"),
        ("=3", "no operator"),
    ],
)
def test_malformed_where_is_a_usage_error_with_a_hint(expr: str, hint: str) -> None:
    from ppn.cli import CommandError
    from ppn.cli._main import build_parser
    from psp._cli_common import build_query

    args = build_parser().parse_args([*_QUERY, "--where", expr])
    with pytest.raises(CommandError) as exc:
        build_query(args)
    assert exc.value.status == 2 and hint in str(exc.value) and "F>=V" in str(exc.value)


@pytest.mark.parametrize(
    ("expr", "op", "args"),
    [
        ("age>=30", "range", (30, None)),
        ("age<30", "range", (None, 30)),
        ("name=Ann", "eq", ("Ann",)),
        ('age=">3"', "eq", (">3",)),
        ("name^=A", "prefix", ("A",)),
        ("city in Oslo,Lima", "in", ("Oslo", "Lima")),
    ],
)
def test_wellformed_where_still_parses(expr: str, op: str, args: tuple[object, ...]) -> None:
    from ppn.cli._main import build_parser
    from psp._cli_common import build_query

    (f,) = build_query(build_parser().parse_args([*_QUERY, "--where", expr])).where
    assert (f.op, f.args) == (op, args)


def test_key_show_prints_the_public_key_of_every_key_file(tmp_path: Path) -> None:
    def ppn(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ppn", *argv], capture_output=True, text=True, timeout=60
        )

    holder = ppn("key", "new", str(tmp_path / "a.key"))
    fleet = ppn("fleet", "keygen", str(tmp_path / "f.key"), "--json")
    assert ppn("key", "show", str(tmp_path / "a.key")).stdout == holder.stdout
    shown = ppn("key", "show", str(tmp_path / "f.key"), "--json").stdout
    assert json.loads(shown)["public"] == json.loads(fleet.stdout)["identity"]
    (tmp_path / "bad.key").write_text("not a key\n")
    for path in ("bad.key", "missing.key"):
        bad = ppn("key", "show", str(tmp_path / path))
        assert bad.returncode == 47 and bad.stderr.startswith("ppn: ") and not bad.stdout
