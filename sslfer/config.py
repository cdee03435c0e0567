"""Typed configuration: a flat dataclass per command, loaded from TOML and `key=value` overrides.

Every field carries its help text (shown by `--help`) and, for the batch stage, the pipeline step whose
output it changes (used to key that step's cache). Shared by all three stages.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from fractions import Fraction
from pathlib import Path


class ConfigError(ValueError):
    """A user mistake in a config file or override; reported as one line."""


def option(default, help: str, step: str | None = None, choices: tuple | None = None,
           between: tuple | None = None):
    """A config field with its help text, (optionally) the pipeline step it belongs to, and what values it
    accepts: `choices` (a set of values, or a function giving them: a registry's names) or `between` ((low,
    high), inclusive; None = unbounded)."""
    return dataclasses.field(default=default, metadata={"help": help, "step": step, "choices": choices,
                                                        "between": between})


def check_value(f: dataclasses.Field, value) -> None:
    """ConfigError (one line, naming the accepted values) unless the field accepts `value`."""
    choices, between = f.metadata.get("choices"), f.metadata.get("between")
    if callable(choices):
        choices = choices()
    if choices is not None and value not in choices:
        raise ConfigError(f"{f.name}={value}: expected one of {' | '.join(str(c) for c in choices)}")
    if between is not None:
        low, high = between
        if (low is not None and value < low) or (high is not None and value > high):
            want = (f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]")
            raise ConfigError(f"{f.name}={value}: expected a value {want}")


def _parse(kind, text: str, name: str):
    try:
        if kind is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is float:
            return float(Fraction(text.strip())) if "/" in text else float(text)
        if kind is int:
            return int(text)
        return text
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{name}={text!r}: expected {kind.__name__}") from None


def _coerce(kind, value, name: str):
    if isinstance(value, str) and kind is not str:
        return _parse(kind, value, name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name}={value!r}: expected {kind.__name__}")
    return value


def load_config(cls, paths=None, overrides: typing.Sequence[str] = ()):
    """Build `cls` from defaults, then the TOML file(s) at `paths` in order, then `key=value` overrides (later
    wins). Sections in a file only group options: `[faceswap] swap_seed = 1` is `swap_seed = 1`."""
    hints = typing.get_type_hints(cls)
    values: dict = {}
    for path in [paths] if isinstance(paths, (str, Path)) else (paths or []):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        for section_or_key, v in data.items():
            items = v.items() if isinstance(v, dict) else [(section_or_key, v)]
            for k, val in items:
                values[k] = val
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        values[k.strip()] = v
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    typed = {k: _coerce(hints[k], v, k) for k, v in values.items()}
    for f in dataclasses.fields(cls):
        if f.name in typed:
            check_value(f, typed[f.name])
    return cls(**typed)


def to_toml(cfg) -> str:
    """The resolved config as TOML (written next to every output)."""
    lines = [f"# resolved {type(cfg).__name__}"]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        lines.append(f"{f.name} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
    return "\n".join(lines) + "\n"


def step_options(cfg, step: str) -> dict:
    """The options that change the output of one pipeline step (keys its cache)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("step") == step}


def options_help(cls) -> str:
    """One line per option: name, default, help."""
    rows = []
    for f in dataclasses.fields(cls):
        rows.append(f"  {f.name} (default {f.default!r})\n      {f.metadata.get('help', '')}")
    return "\n".join(rows)
