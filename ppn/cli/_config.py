"""The configuration layers under argparse (issue 17): /etc/ppn/ppn.toml, PPN_* variables.

Every flag of every command can be set in a TOML file, one table per command whose keys are the
flag names (``[up]`` ``control-port = 9206``; ``[vault.serve]`` ``listen = "10.0.0.1:9210"``),
and in the environment as ``PPN_<COMMAND>_<FLAG>`` (``PPN_VAULT_SERVE_LISTEN``). Both become the
argparse defaults of the command's parser, so the command line still wins: flag > environment >
file > default. The global options ``--log-format`` and ``--log-level`` are keys at the top of
the file and ``PPN_LOG_FORMAT``/``PPN_LOG_LEVEL``. The file is ``--config PATH`` (a global
option), else ``$PPN_CONFIG``, else /etc/ppn/ppn.toml when it exists. A bad key or value stops ``ppn`` with one sentence naming the
file and line (or the variable). ``ppn/cli/_main.py`` imports this module only when a file or a
``PPN_*`` variable exists, so a plain ``ppn`` start pays nothing for it.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_FILE",
    "ROOT_FLAGS",
    "ConfigError",
    "Layers",
    "apply_config",
    "effective",
]

DEFAULT_FILE = Path("/etc/ppn/ppn.toml")  # = ppn.cli._main.DEFAULT_CONFIG (tested)
# The global options a file sets at its top level (log-format = "json") and the environment as
# PPN_LOG_FORMAT; --config and --version are not configuration.
ROOT_FLAGS = ("log-format", "log-level")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A configuration file or variable ppn cannot use; the message names where."""


def _config_arg(argv: Sequence[str]) -> str | None:
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # the command starts: globals end
        arg = argv[i]
        if arg == "--config":
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        i += 2 if arg[2:] in ROOT_FLAGS else 1  # --log-format VALUE
    return None


def _choose_file(given: str | None, environ: Mapping[str, str]) -> Path | None:
    if given:
        return Path(given)
    if environ.get("PPN_CONFIG"):
        return Path(environ["PPN_CONFIG"])
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


# --- the file ------------------------------------------------------------------------------------


@dataclass
class _File:
    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int]  # (table..., key) or (table...) -> line number

    def where(self, table: tuple[str, ...], key: str | None = None) -> str:
        line = self.lines.get((*table, key) if key else table) or self.lines.get(table) or 1
        return f"{self.path} line {line}"


_HEADER = re.compile(r"\s*\[\s*([^\]\[]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*=")


def _locate(text: str) -> dict[tuple[str, ...], int]:
    """Where each table and key is (tomllib reports values, not lines)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER.match(line):
            table = tuple(p.strip().strip("\"'") for p in header.group(1).split("."))
            lines.setdefault(table, number)
        elif key := _KEY.match(line):
            lines.setdefault((*table, key.group(1).strip("\"'")), number)
    return lines


def _load(path: Path) -> _File:
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return _File(path=path, data=data, lines=_locate(text))


# --- the parsers ----------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    flags: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if (
            isinstance(action, argparse._HelpAction)
            or not action.option_strings
            or action.option_strings == ["--version"]
        ):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                flags[option[2:]] = action
    return flags


def _flags_at(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> dict[str, argparse.Action]:
    """A command's flags; at the top (``path == ()``), the configurable global options."""
    flags = _flags(parser)
    return flags if path else {k: v for k, v in flags.items() if k in ROOT_FLAGS}


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = _subcommands(parser)
    if _flags_at(parser, path):
        yield path, parser
    for name, sub in subs.items():
        yield from _commands(sub, (*path, name))


def _convert_one(action: argparse.Action, raw: Any, from_env: bool) -> Any:
    if from_env:
        text = raw
    elif isinstance(raw, bool):
        raise ValueError("expected a value, not true/false")
    elif isinstance(raw, int | float | str):
        text = str(raw)
    else:
        raise ValueError(f"expected a string or a number, not {type(raw).__name__}")
    value = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"must be one of {', '.join(map(str, action.choices))}")
    return value


def _convert(action: argparse.Action, raw: Any, from_env: bool) -> Any:
    """The namespace value ``raw`` (a TOML value, or a variable's text) stands for."""
    if action.nargs == 0:  # store_true / store_false / store_const
        if from_env:
            word = str(raw).strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError("expected true or false (1/0, yes/no)")
            on = word in _TRUE
        elif isinstance(raw, bool):
            on = raw
        else:
            raise ValueError("expected true or false")
        return action.const if on else action.default
    many = (
        isinstance(action, argparse._AppendAction)
        or action.nargs in ("*", "+")
        or (isinstance(action.nargs, int))
    )
    if many:
        if from_env:
            items: list[Any] = [s.strip() for s in str(raw).split(",") if s.strip()]
        else:
            items = raw if isinstance(raw, list) else [raw]
        return [_convert_one(action, item, from_env) for item in items]
    if isinstance(action, argparse._CountAction):
        if from_env:
            return int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError("expected a count")
        return raw
    return _convert_one(action, raw, from_env)


def _env_name(path: tuple[str, ...], flag: str) -> str:
    return "PPN_" + "_".join((*path, flag)).upper().replace("-", "_")


# --- applying the layers --------------------------------------------------------------------------


@dataclass
class Layers:
    """What the file and environment set, applied as parser defaults; ``finish`` completes it."""

    file: Path | None = None
    # (command path, flag) -> (value, source)
    values: dict[tuple[tuple[str, ...], str], tuple[Any, str]] = field(default_factory=dict)
    _appends: list[tuple[str, int]] = field(default_factory=list)

    def finish(self, namespace: argparse.Namespace) -> argparse.Namespace:
        # argparse appends a flag's values to a list default: the command line replaces the
        # configured list instead (flag > environment > file).
        for dest, configured in self._appends:
            current = getattr(namespace, dest, None)
            if isinstance(current, list) and len(current) > configured:
                setattr(namespace, dest, current[configured:])
        return namespace


def _raw_values(
    parser: argparse.ArgumentParser,
    loaded: _File | None,
    environ: Mapping[str, str],
    families: Mapping[str, str],
) -> Iterator[
    tuple[tuple[str, ...], argparse.ArgumentParser, argparse.Action, str, Any, bool, str]
]:
    """(path, parser, action, flag, raw, from_env, where) for every configured flag."""
    commands = dict(_commands(parser))
    if loaded is not None:
        yield from _walk_table(parser, (), loaded.data, loaded, families)
    for path, sub in commands.items():
        for flag, action in _flags_at(sub, path).items():
            name = _env_name(path, flag)
            if name in environ:
                yield path, sub, action, flag, environ[name], True, f"env {name}"


def _walk_table(
    parser: argparse.ArgumentParser,
    path: tuple[str, ...],
    table: dict[str, Any],
    loaded: _File,
    families: Mapping[str, str],
) -> Iterator[
    tuple[tuple[str, ...], argparse.ArgumentParser, argparse.Action, str, Any, bool, str]
]:
    subs = _subcommands(parser)
    flags = _flags_at(parser, path)
    for key, value in table.items():
        flag = key.replace("_", "-")
        if key in subs and isinstance(value, dict):
            yield from _walk_table(subs[key], (*path, key), value, loaded, families)
        elif flag in flags:
            yield path, parser, flags[flag], flag, value, False, loaded.where(path, key)
        elif not path and key in families and isinstance(value, dict):
            # A command of a family this run did not load: check its table against that
            # family's commands (registered only when the file names one), apply nothing.
            alone = argparse.ArgumentParser(prog="ppn")
            import_module(families[key]).register(alone.add_subparsers())
            for sub_path, _p, action, sub_flag, raw, _e, where in _walk_table(
                _subcommands(alone)[key], (key,), value, loaded, {}
            ):
                _checked(sub_path, action, sub_flag, raw, False, where)
        else:
            where = loaded.where((*path, key) if isinstance(value, dict) else path, key)
            what = f"ppn {' '.join(path)}" if path else "ppn"
            if isinstance(value, dict):
                raise ConfigError(f"{where}: {what} has no command [{'.'.join((*path, key))}]")
            raise ConfigError(
                f"{where}: {what} has no flag --{flag}"
                + ("" if path else " (put flags in a table named after the command, e.g. [up])")
            )


def _checked(
    path: tuple[str, ...], action: argparse.Action, flag: str, raw: Any, from_env: bool, where: str
) -> Any:
    try:
        return _convert(action, raw, from_env)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        if from_env:
            command = " ".join(("ppn", *path))
            message = f"{where.split(' ', 1)[1]}={raw}: --{flag} of {command}: {exc}"
        else:
            message = f"{where}: [{'.'.join(path)}] {flag} = {raw!r}: {exc}"
        raise ConfigError(message) from None


def _collect(
    parser: argparse.ArgumentParser,
    loaded: _File | None,
    environ: Mapping[str, str],
    families: Mapping[str, str],
) -> Layers:
    layers = Layers(file=loaded.path if loaded else None)
    for path, _sub, action, flag, raw, from_env, where in _raw_values(
        parser, loaded, environ, families
    ):
        value = _checked(path, action, flag, raw, from_env, where)
        # The environment overrides the file: it comes second in _raw_values.
        layers.values[(path, flag)] = (value, where)
    return layers


def apply_config(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    families: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> Layers:
    """Set the file's and the environment's values as the defaults of ``parser``'s commands."""
    environ = os.environ if environ is None else environ
    path = _choose_file(_config_arg(argv), environ)
    has_env = any(k.startswith("PPN_") for k in environ)
    if path is None and not has_env:
        return Layers()
    loaded = _load(path) if path is not None else None
    layers = _collect(parser, loaded, environ, families)
    commands = dict(_commands(parser))
    for (cmd, flag), (value, _) in layers.values.items():
        sub = commands[cmd]
        action = _flags_at(sub, cmd)[flag]
        action.required = False  # the file or environment gives it
        sub.set_defaults(**{action.dest: value})
        if isinstance(action, argparse._AppendAction):
            layers._appends.append((action.dest, len(value)))
    return layers


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
            return f"{value[0]}:{value[1]}"  # a parsed HOST:PORT
        return [_plain(v) for v in value]
    return str(value)


def effective(
    parser: argparse.ArgumentParser, given: str | None, environ: Mapping[str, str] | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Every flag of every command with its effective value and source, and the file used."""
    environ = os.environ if environ is None else environ
    path = _choose_file(given, environ)
    loaded = _load(path) if path is not None else None
    layers = _collect(parser, loaded, environ, {})
    rows = []
    for cmd, sub in _commands(parser):
        for flag, action in _flags_at(sub, cmd).items():
            if flag != next(o for o in action.option_strings if o.startswith("--"))[2:]:
                continue  # one row per action, under its long name
            value, source = layers.values.get((cmd, flag), (action.default, "default"))
            rows.append(
                {
                    "command": " ".join(cmd),
                    "flag": flag,
                    "value": _plain(value),
                    "source": source,
                    "env": _env_name(cmd, flag),
                }
            )
    return rows, str(path) if path else None
