"""Job settings from TOML files, dicts and keyword arguments, checked against the config dataclass.

`--config job.toml` on the command line and `embed("job.toml")` / `embed({...})` /
`embed(input=...)` in Python all go through `build`: the keys are the dataclass field names
(`batch_size`; the flag spelling `batch-size`, and for a field whose flag is renamed, the
flag's name, are accepted too), values keep their TOML types, and later sources override earlier
ones (file, then flags or keyword arguments). Why check here rather than leave it to the
dataclass: a typo in a key would otherwise be ignored silently and a string where a number
belongs would fail deep inside the job; here both are an `InputError` (exit 2) naming the key,
the value and the file.

`dumps` writes a config back as TOML (`--print-config`), so a command line can be turned into a
file that reproduces it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from fashion_batch.errors import InputError, UserError
from fashion_batch.options import cli_fields

_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _names(cls) -> dict[str, tuple[dataclasses.Field, dict, type]]:
    """Every accepted key spelling → (field, option metadata, scalar type)."""
    names = {}
    for f, meta, kind in cli_fields(cls):
        spellings = {f.name, f.name.replace("_", "-")}
        if meta["flag"]:
            flag = meta["flag"].lstrip("-")
            spellings |= {flag, flag.replace("-", "_")}
        names.update(dict.fromkeys(spellings, (f, meta, kind)))
    return names


def _checked(key: str, value: Any, meta: dict, kind: type, source: str) -> Any:
    """`value` if it has the field's type (an int is a valid float), else an InputError."""
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise InputError(f"{source}: {key} = {value!r} must be {_KINDS.get(kind, kind.__name__)}")
    if meta["choices"] and value not in meta["choices"]:
        raise InputError(f"{source}: {key} = {value!r} must be one of {'|'.join(meta['choices'])}")
    return value


def check_values(cls, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`values` keyed by field name, each checked; an unknown key or a wrong type is an
    InputError that starts with `source` (the file, or "keyword arguments")."""
    names = _names(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(
                f"{source}: unknown key {key!r} ({cls.__name__} has no such setting){hint}"
            )
        f, meta, kind = names[key]
        if f.name in out:
            raise InputError(f"{source}: {f.name} is given twice (as {key!r} too)")
        out[f.name] = _checked(key, value, meta, kind, source)
    return out


def load(cls, path: str | os.PathLike, source: str | None = None) -> dict[str, Any]:
    """The checked settings of a TOML file (a flat table of `key = value`)."""
    source = source or str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as e:
        raise InputError(f"{source}: no such file") from e
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{source}: not valid TOML: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{source}: cannot read: {e}") from e
    return check_values(cls, data, source)


def build(
    cls,
    config=None,
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str | None = None,
    overrides_source: str = "keyword arguments",
    fields: Mapping[str, Any] | None = None,
):
    """A `cls` from a config (an instance, a mapping or a TOML path) with overrides on top.

    Args:
        cls: the job's config dataclass.
        config: a `cls` (returned as is), a mapping of settings, a TOML file path, or None.
        overrides: settings that win over `config`'s (command-line flags, keyword arguments).
        source: how error messages name `config` (default: the path, or "config").
        overrides_source: how error messages name `overrides`.
        fields: fields that are not options, passed straight to `cls` (EmbedConfig's `extra`).
    """
    overrides = dict(overrides or {})
    if isinstance(config, cls):
        if overrides or fields:
            raise TypeError(f"pass a {cls.__name__} or settings, not both")
        return config
    if isinstance(config, str | os.PathLike):
        values = load(cls, config, source)
    elif isinstance(config, Mapping):
        values = check_values(cls, config, source or "config")
    elif config is None:
        values = {}
    else:
        raise TypeError(f"config must be a {cls.__name__}, a mapping or a TOML path: {config!r}")
    values.update(check_values(cls, overrides, overrides_source))
    return construct(cls, values, fields)


def construct(cls, values: dict[str, Any], fields: Mapping[str, Any] | None = None):
    """`cls(**values, **fields)` after checking that every required setting is there; a value
    the dataclass refuses is an InputError whatever exception its check raised."""
    missing = [
        f"{f.name} ({meta['flag'] or '--' + f.name.replace('_', '-')})"
        for f, meta, _ in cli_fields(cls)
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise InputError(f"missing required setting(s): {', '.join(missing)}")
    try:
        return cls(**values, **(fields or {}))
    except UserError:
        raise
    except ValueError as e:
        raise InputError(str(e)) from e


def _toml_value(value: Any) -> str:
    """A scalar as TOML: JSON's string escapes are valid TOML basic-string escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def dumps(config) -> str:
    """The settings of `config` as TOML that `load` reads back to the same config: one
    `key = value` per option, its help as a comment; unset (None) options are commented out."""
    lines = []
    for f, meta, _ in cli_fields(type(config)):
        value = getattr(config, f.name)
        if meta["hidden"] and value == f.default:
            continue
        lines.append(f"# {meta['help']}")
        if value is None:
            lines.append(f"# {f.name} =  (not set)")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
