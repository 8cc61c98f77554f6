"""One source for every flag: config dataclass fields carry their command-line spelling.

A job's config dataclass is the single description of its settings. Each field made with
`option(...)` says its help text and, where the name alone is not enough, its flag, short flag,
choices or metavar; `add_arguments` builds argparse options from the fields (type, default and
`required` come from the annotation and the default) and `from_args` builds the config back from
the parsed namespace, on top of a `--config` TOML file (fashion_batch.config_file). So the CLI,
the TOML keys, the Python API, the `ray job submit` entrypoints and docs/cli.md cannot drift from
the dataclass, and a new field is a new flag with no second place to edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

_META = "fashion_batch.option"


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002 - argparse's own name for it
    flag: str | None = None,
    short: str | None = None,
    choices: tuple | None = None,
    metavar: str | None = None,
    positional: bool = False,
    hidden: bool = False,
    negatable: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the default (omit for a required option).
        help: one line for `--help` and docs/cli.md.
        flag: the long flag, when it is not `--field-name`.
        short: a short flag (`-k`).
        choices: the allowed values.
        metavar: the value's name in `--help`.
        positional: a positional argument instead of a flag.
        hidden: accepted but not shown in `--help` (test hooks).
        negatable: a `bool | None` option with both `--x` and `--no-x`.
    """
    meta = dict(
        help=help,
        flag=flag,
        short=short,
        choices=choices,
        metavar=metavar,
        positional=positional,
        hidden=hidden,
        negatable=negatable,
    )
    return dataclasses.field(default=default, metadata={_META: meta})


def _scalar_type(annotation) -> type:
    """int for `int`, `int | None`; str for `str | None`; bool for `bool`, `bool | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def cli_fields(cls) -> list[tuple[dataclasses.Field, dict, type]]:
    """(field, option metadata, scalar type) of each field of `cls` that is a CLI option."""
    hints = typing.get_type_hints(cls)
    return [
        (f, f.metadata[_META], _scalar_type(hints[f.name]))
        for f in dataclasses.fields(cls)
        if _META in f.metadata
    ]


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one argparse option per `option(...)` field of the dataclass `cls`, and `--config` /
    `--print-config`.

    Every option's argparse default is SUPPRESS, so the namespace holds only the flags that were
    given: those override `--config`'s values, and the dataclass supplies the rest of the
    defaults (from_args). Required options are checked there too, since a config file may give
    them."""
    for f, meta, kind in cli_fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = meta["help"]
        if required and not meta["positional"]:
            help_text += " (required, as a flag or in --config)"
        elif not required and f.default is not None and f.default is not False:
            help_text += f" (default: {f.default})"
        kwargs: dict[str, Any] = {"help": argparse.SUPPRESS if meta["hidden"] else help_text}
        if meta["positional"]:
            parser.add_argument(f.name, type=kind, **kwargs)
            continue
        names = [n for n in (meta["short"], meta["flag"] or "--" + f.name.replace("_", "-")) if n]
        kwargs["default"] = argparse.SUPPRESS
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if meta["negatable"] else "store_true"
        else:
            kwargs["type"] = kind
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"] or not meta["choices"]:  # argparse shows the choices otherwise
                default_metavar = names[-1].lstrip("-").upper().replace("-", "_")
                kwargs["metavar"] = meta["metavar"] or default_metavar
        parser.add_argument(*names, dest=f.name, **kwargs)
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of settings (keys: the option names with underscores); flags override it",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as TOML (a --config file) and exit without running",
    )


def from_args(cls, args: argparse.Namespace, **fields):
    """The config `cls` from parsed `add_arguments` options: `--config`'s settings, the flags
    given on top, the dataclass defaults for the rest (other attributes are ignored). `fields`
    are non-option fields passed to `cls` as they are."""
    from fashion_batch.config_file import build

    names = {f.name for f, _, _ in cli_fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    path = getattr(args, "config", None)
    return build(
        cls,
        path,
        given,
        source=f"--config {path}",
        overrides_source="command line",
        fields=fields,
    )
