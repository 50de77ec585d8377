"""The configuration layers (ppn/cli/_config.py, issue 17): flag > environment > file > default,
every flag of every command settable, and errors that name the file and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ppn.cli._config import ConfigError, apply_config
from ppn.cli._main import FAMILIES, build_parser

PPN = [sys.executable, "-m", "ppn"]
KNOWN = {c: m for m, cs in FAMILIES.items() for c in cs}


def _parse(argv: list[str], env: dict[str, str]) -> Any:
    parser = build_parser()
    layers = apply_config(parser, argv, KNOWN, env)
    return layers.finish(parser.parse_args(argv))


def _ppn(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PPN_")}
    return subprocess.run(
        [*PPN, *argv], capture_output=True, text=True, timeout=60, env={**base, **(env or {})}
    )


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "ppn.toml"
    path.write_text(
        "# a node\n"
        "[up]\n"
        "control-port = 1111\n"
        'role = ["relay"]\n'
        "json = true\n"
        "\n"
        "[vault.serve]\n"
        'listen = "127.0.0.1:7000"\n'
    )
    return path


def test_precedence_flag_env_file_default(conf: Path) -> None:
    cfg = ["--config", str(conf)]
    env = {"PPN_UP_CONTROL_PORT": "2222"}
    assert _parse([*cfg, "up"], {}).control_port == 1111  # file
    assert _parse([*cfg, "up"], env).control_port == 2222  # env over file
    flag = _parse([*cfg, "up", "--control-port", "3333"], env)
    assert flag.control_port == 3333  # flag over env
    assert _parse(["up"], {}).control_port == 9206  # nothing set: the default
    assert _parse([*cfg, "vault", "serve", "--store", "x"], {}).listen == (
        "127.0.0.1",
        7000,
    )


def test_lists_and_switches(conf: Path) -> None:
    cfg = ["--config", str(conf)]
    args = _parse([*cfg, "up"], {})
    assert args.role == ["relay"] and args.json is True
    # A flag replaces the configured list instead of adding to it.
    assert _parse([*cfg, "up", "--role", "cloud"], {}).role == ["cloud"]
    env = {"PPN_UP_ROLE": "cloud,relay", "PPN_UP_JSON": "no"}
    args = _parse([*cfg, "up"], env)
    assert args.role == ["cloud", "relay"] and args.json is False


def test_a_required_flag_can_come_from_the_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    conf = tmp_path / "c.toml"
    conf.write_text(f'[vault.init]\nstore = "{store}"\n')
    done = _ppn("--config", str(conf), "vault", "init")
    assert done.returncode == 0, done.stderr
    assert (store / "vault.sqlite").is_file()


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[up]\nstate = '/x'\nbogus = 1\n", 3, "ppn up has no flag --bogus"),
        ("\n[up]\ncontrol-port = 'abc'\n", 3, "[up] control-port = 'abc'"),
        ("[up]\njson = 'yes'\n", 2, "expected true or false"),
        ("[vault.serve]\nlisten = 'nowhere'\n", 2, "[vault.serve] listen"),
        ("[nosuch]\nx = 1\n", 1, "has no command [nosuch]"),
        ("[vault.frob]\nx = 1\n", 1, "ppn vault has no command [vault.frob]"),
        ("port = 1\n", 1, "put flags in a table"),
    ],
)
def test_a_bad_key_or_value_names_file_and_line(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    conf = tmp_path / "ppn.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as caught:
        _parse(["--config", str(conf), "status"], {})
    assert f"{conf} line {line}: " in str(caught.value)
    assert words in str(caught.value)
    done = _ppn("--config", str(conf), "status")
    assert done.returncode == 73
    assert done.stderr.startswith(f"ppn: {conf} line {line}: ") and "Traceback" not in done.stderr


def test_broken_toml_and_bad_variables(tmp_path: Path) -> None:
    conf = tmp_path / "ppn.toml"
    conf.write_text("[up]\ncontrol-port = \n")
    done = _ppn("--config", str(conf), "status")
    assert done.returncode == 73 and f"{conf} is not valid TOML" in done.stderr
    assert "line 2" in done.stderr
    done = _ppn("status", env={"PPN_UP_CONTROL_PORT": "many"})
    assert done.returncode == 73
    assert "PPN_UP_CONTROL_PORT=many: --control-port of ppn up" in done.stderr
    done = _ppn("--config", str(tmp_path / "missing.toml"), "status")
    assert done.returncode == 73 and "cannot read the configuration file" in done.stderr


def test_config_show_says_where_each_value_comes_from(conf: Path) -> None:
    done = _ppn("--config", str(conf), "config", "show", "--json", env={"PPN_UP_STATE": "/srv/p"})
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["file"] == str(conf)
    rows = {(r["command"], r["flag"]): r for r in doc["values"]}
    assert rows[("up", "control-port")]["value"] == 1111
    assert rows[("up", "control-port")]["source"] == f"{conf} line 3"
    assert rows[("up", "state")] | {} == {
        "command": "up",
        "flag": "state",
        "value": "/srv/p",
        "source": "env PPN_UP_STATE",
        "env": "PPN_UP_STATE",
    }
    assert rows[("vault serve", "listen")]["value"] == "127.0.0.1:7000"
    assert rows[("orchestration serve", "listen")]["source"] == "default"
    text = _ppn("--config", str(conf), "config", "show", "up").stdout
    assert f"control-port = 1111  # {conf} line 3" in text
