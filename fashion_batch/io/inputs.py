"""Input discovery and schema checks: which Parquet files a file, directory or glob names, and
whether they have the columns a job needs."""

from __future__ import annotations

import fnmatch

import pyarrow as pa
import pyarrow.fs as pafs

from fashion_batch.errors import InputError
from fashion_batch.io.fs import file_info, filesystem


def _is_data_file(path: str, base: str = "") -> bool:
    """A `.parquet` file with no `_`/`.` prefix on it or on any folder below `base`: the rule
    pyarrow datasets and Spark follow, so hidden temporaries and side folders such as an
    output's `_state/` are never taken for catalog data."""
    rel = path[len(base) :].lstrip("/") if base and path.startswith(base) else path
    parts = rel.split("/")
    return parts[-1].endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts)


def list_input_files(uri: str, flag: str = "--input") -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of a file, directory (recursive) or glob, sorted by path; errors name
    `flag`, the option the user gave the path with."""
    fs, path = filesystem(uri)
    if any(c in path for c in "*?["):
        base = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except (FileNotFoundError, OSError) as e:
            raise InputError(f"{flag} {uri}: cannot list {base}: {e}") from e
        files = [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, path)]
    else:
        info = file_info(fs, path, f"{flag} {uri}")
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{flag} {uri}: no such file or directory")
        if info.type == pafs.FileType.File:
            files = [path]
        else:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = [i.path for i in infos if i.is_file and _is_data_file(i.path, path)]
    if not files:
        raise InputError(f"{flag} {uri}: no .parquet files found")
    return fs, sorted(files)


def check_schema(path: str, schema: pa.Schema, required: list[str]) -> None:
    for column in required:
        if column not in schema.names:
            raise InputError(
                f"{path}: missing column {column!r} (has: {', '.join(schema.names)}); "
                "check --id-column / --text-template"
            )
        t = schema.field(column).type
        if pa.types.is_nested(t) or pa.types.is_dictionary(t) and pa.types.is_nested(t.value_type):
            raise InputError(f"{path}: column {column!r} has nested type {t}; needs a scalar")
