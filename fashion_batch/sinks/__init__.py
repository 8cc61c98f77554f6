"""Sinks: where a finished embed output is loaded after its Parquet output commits
(docs/sinks.md). One sink so far, LanceDB (`--sink lancedb://PATH`, sinks/lancedb.py).

This module holds what needs no sink library: parsing and checking the `--sink` URI (run when the
config is built, so a bad URI is exit 2 before anything starts) and the one place that imports
the optional library, so its absence is a clear exit 2 naming the extra to install.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fashion_batch.errors import InputError

SCHEME = "lancedb://"
INSTALL_HINT = "pip install 'fashion-batch[lancedb]'"
_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class SinkTarget:
    """A parsed `--sink` URI.

    Attributes:
        uri: the URI as recorded and printed (`lancedb://` + an absolute local path or s3:// URI).
        location: what `lancedb.connect` takes: an absolute local path or an `s3://` URI.
        s3: True for an `s3://` location.
    """

    uri: str
    location: str
    s3: bool


def parse_sink(uri: str, flag: str = "--sink") -> SinkTarget:
    """`lancedb://PATH` with PATH a local path (relative to the working directory, as on the
    command line) or `s3://bucket/prefix`; anything else is an InputError (exit 2).

    Credentials in the URI are refused rather than redacted: LanceDB's object store takes them
    from the standard AWS_* environment (or an instance profile), like the rest of the job."""
    if not uri.startswith(SCHEME) or not uri[len(SCHEME) :].strip():
        raise InputError(
            f"{flag} {uri!r}: must be lancedb://PATH (a local path, or lancedb://s3://bucket/prefix)"
        )
    rest = uri[len(SCHEME) :]
    if "://" not in rest:
        location = str(Path(rest).expanduser().resolve())
        return SinkTarget(SCHEME + location, location, s3=False)
    parts = urlsplit(rest)
    if parts.scheme != "s3":
        raise InputError(
            f"{flag} {uri!r}: the LanceDB location must be a local path or s3://, "
            f"not {parts.scheme}://"
        )
    if "@" in parts.netloc or parts.query:
        raise InputError(
            f"{flag}: no credentials or options in the URI; LanceDB reads them from AWS_* "
            "environment variables (docs/sinks.md)"
        )
    if not parts.netloc:
        raise InputError(f"{flag} {uri!r}: s3:// needs a bucket (lancedb://s3://bucket/prefix)")
    location = f"s3://{parts.netloc}{parts.path.rstrip('/')}"
    return SinkTarget(SCHEME + location, location, s3=True)


def check_table_name(name: str, flag: str = "--sink-table") -> str:
    """LanceDB table names: letters, digits, `_`, `-` and `.`, not starting with `.` or `-`."""
    if not _TABLE_NAME.fullmatch(name):
        raise InputError(f"{flag} {name!r}: use letters, digits, '_', '-' and '.'")
    return name


def split_columns(value: str | None, flag: str = "--sink-columns") -> list[str]:
    """`price,brand` → ["price", "brand"]; empty names and repeats are an InputError."""
    if value is None:
        return []
    names = [c.strip() for c in value.split(",")]
    if any(not c for c in names):
        raise InputError(f"{flag} {value!r}: an empty column name (comma-separated names)")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise InputError(f"{flag}: {', '.join(repeated)} named twice")
    return names


def _missing(reason: str) -> InputError:
    return InputError(
        f"--sink lancedb:// needs the lancedb package, which is not installed ({reason}); "
        f"install it with: {INSTALL_HINT}"
    )


def require_lancedb() -> None:
    """An InputError (exit 2) naming the extra to install if `lancedb` is not installed; looked
    up without importing it. The job calls this before Ray starts: an imported lancedb runs an
    after-fork hook (a new thread) in every process Ray forks, and warns about it."""
    try:
        found = importlib.util.find_spec("lancedb") is not None
    except (ImportError, ValueError):  # a None entry in sys.modules, or a broken package
        found = False
    if not found:
        raise _missing("no module named 'lancedb'")


def import_lancedb():
    """The `lancedb` module, or an InputError (exit 2) that says how to install it."""
    try:
        import lancedb
    except ImportError as e:
        raise _missing(str(e)) from None
    return lancedb
