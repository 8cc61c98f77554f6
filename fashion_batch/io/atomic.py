"""The atomic writer every output file goes through: write beside, then move into place."""

from __future__ import annotations

import json
import posixpath
import re
import uuid
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def write_atomic(fs: pafs.FileSystem, table: pa.Table, path: str) -> None:
    """Write to a temporary name beside `path`, then move it into place.

    A crash leaves at most a `.tmp-*` file, never a half-written part that readers would take
    for a finished one. The temporary name starts with a dot, so readers that list the directory
    (pyarrow datasets, Spark, a `part-*.parquet` glob) skip it; the next run deletes it.
    """
    tmp = _tmp_name(path)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(tmp) as out:
        pq.write_table(table, out, compression="zstd")
    fs.move(tmp, path)


def write_row_groups_atomic(
    fs: pafs.FileSystem, schema: pa.Schema, tables: Iterable[pa.Table], path: str
) -> None:
    """`write_atomic` for a file built from several tables, one row group each, in order: a
    published part holds its units this way, so a reader of a few rows reads only their units."""
    tmp = _tmp_name(path)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(tmp) as out, pq.ParquetWriter(out, schema, compression="zstd") as w:
        for table in tables:
            w.write_table(table.cast(schema), row_group_size=max(1, len(table)))
    fs.move(tmp, path)


def copy_atomic(fs: pafs.FileSystem, source: str, path: str) -> None:
    """Copy a finished file into place the same way (on S3 a server-side copy: no bytes pass
    through this process)."""
    tmp = _tmp_name(path)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    fs.copy_file(source, tmp)
    fs.move(tmp, path)


def _tmp_name(path: str) -> str:
    head, name = posixpath.split(path)
    return posixpath.join(head, f".{name}.tmp-{uuid.uuid4().hex[:8]}")


_TMP = re.compile(r"\..+\.tmp-[0-9a-f]{8}")


def is_temporary(name: str) -> bool:
    """True for a file name `write_atomic` / `write_json_atomic` use while writing."""
    return _TMP.fullmatch(name) is not None


def write_json_atomic(fs: pafs.FileSystem, obj: dict, path: str) -> None:
    tmp = _tmp_name(path)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(tmp) as out:
        out.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
    fs.move(tmp, path)


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    """The JSON object at `path`, or None if there is no file."""
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_bytes_atomic(fs: pafs.FileSystem, data: bytes, path: str) -> None:
    """Any other file (a report's image) the same way."""
    tmp = _tmp_name(path)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)
