"""Configuration: a TOML file, then `key=value` overrides.

Each service declares its settings as a dataclass whose field names carry their
units (`gossip_interval_ms`, `lmdb_map_size_bytes`). `load` reads one TOML table
into it and applies overrides on top, converting each value to the field's type.
Unknown keys are errors: a typo must not silently keep a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from borealis.errors import InvalidRequest

T = TypeVar("T")

_TOML_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ConfigError(InvalidRequest):
    """A configuration file or override is malformed or names an unknown key."""


def load(
    cls: type[T], path: Path | None = None, overrides: typing.Iterable[str] = (), table: str = ""
) -> T:
    """Builds `cls` from the TOML file's `table` (or its top level), then `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read config file: {error}", path=str(path)) from error
        values.update(document.get(table, {}) if table else document)
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator:
            raise ConfigError("override must be key=value", override=override)
        values[key.strip()] = text.strip()
    return build(cls, values)


def build(cls: type[T], values: dict[str, Any]) -> T:
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)}", section=cls.__name__)
    converted = {key: _convert(key, hints[key], value) for key, value in values.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error), section=cls.__name__) from error


def _convert(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value in (None, "", "none"):
            return None
        hint = options[0]
    if not isinstance(value, str):
        return value
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"not a boolean: {value}")
            return value.lower() in ("true", "1", "yes")
        if hint is int:
            return int(value, 0)
        if hint is float:
            return float(value)
        if hint is Path:
            return Path(value)
    except ValueError as error:
        raise ConfigError(f"bad value for {key}: {error}", key=key) from error
    return value


def to_toml(config: Any) -> str:
    """Renders a flat config dataclass as a TOML table body (for files the launcher writes)."""
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = str(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            # TOML basic strings may not hold control characters (but tab) unescaped.
            text = _TOML_CONTROL.sub(lambda match: f"\\u{ord(match[0]):04x}", text)
        lines.append(f"{field.name} = {text}")
    return "\n".join(lines) + "\n"


def from_command_line(
    cls: type[T], table: str, argv: list[str], prog: str, description: str, flags: tuple[str, ...]
) -> T:
    """A service's settings from `--config FILE`, `--set KEY=VALUE ...` and shortcut
    flags (`--data-dir D` is the override `data_dir=D`), in that order of precedence."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help=f"TOML file; settings under [{table}]")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting"
    )
    for flag in flags:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag)
    args = parser.parse_args(argv)
    overrides = list(args.set)
    overrides += [
        f"{flag}={getattr(args, flag)}" for flag in flags if getattr(args, flag) is not None
    ]
    return load(cls, args.config, overrides, table=table)
