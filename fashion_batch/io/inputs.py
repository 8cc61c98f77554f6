"""Input discovery and schema checks: which Parquet files a file, directory or glob names, and
whether they have the columns a job needs."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.fs as pafs

from fashion_batch.errors import InputError
from fashion_batch.io.fs import file_info, filesystem


def _hidden(path: str, base: str) -> bool:
    """True if the file or any folder below `base` starts with `_` or `.`: the rule pyarrow
    datasets and Spark follow, so `_SUCCESS`, `.crc` checksums, a writer's `_temporary/` tree
    and side folders such as an output's `_state/` are never taken for catalog data."""
    rel = path[len(base) :].lstrip("/") if base and path.startswith(base) else path
    return any(p.startswith(("_", ".")) for p in rel.split("/"))


def glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex over whole paths: `*` and `?` stay within one path component, `**`
    spans any number of them (`a/**/b` also matches `a/b`), `[...]` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))


def glob_base(path: str) -> str:
    """The folder a glob is listed from (the path itself when it is no glob)."""
    if not any(c in path for c in "*?["):
        return path
    return path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"


def list_input_files(uri: str, flag: str = "--input") -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of a file, directory (recursive) or glob, sorted by path; errors name
    `flag`, the option the user gave the path with.

    A directory gives its `.parquet` files at any depth; a glob gives the files it matches
    (`glob_regex`); in both, files and folders below the listed root whose name starts with `_`
    or `.` are skipped. The same rules hold for local paths and `s3://`.
    """
    fs, path = filesystem(uri)
    if any(c in path for c in "*?["):
        base = glob_base(path)
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except (FileNotFoundError, OSError) as e:
            raise InputError(f"{flag} {uri}: cannot list {base}: {e}") from e
        regex = glob_regex(path)
        files = [
            i.path
            for i in infos
            if i.is_file and regex.fullmatch(i.path) and not _hidden(i.path, base)
        ]
    else:
        info = file_info(fs, path, f"{flag} {uri}")
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{flag} {uri}: no such file or directory")
        if info.type == pafs.FileType.File:
            files = [path]
        else:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = [
                i.path
                for i in infos
                if i.is_file and i.path.endswith(".parquet") and not _hidden(i.path, path)
            ]
    if not files:
        raise InputError(f"{flag} {uri}: no .parquet files found")
    return fs, sorted(files)


def check_schema(path: str, schema: pa.Schema, required: list[str]) -> None:
    for column in required:
        if column not in schema.names:
            raise InputError(
                f"{path}: missing column {column!r} (has: {', '.join(schema.names)}); "
                "check --id-column / --text-template / --fix-template"
            )
        t = schema.field(column).type
        if pa.types.is_nested(t) or pa.types.is_dictionary(t) and pa.types.is_nested(t.value_type):
            raise InputError(f"{path}: column {column!r} has nested type {t}; needs a scalar")
