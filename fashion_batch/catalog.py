"""The catalog contract: find the input, check it before any work, plan work units, decide which
rows are quarantined, and write the output files and manifest.

Why plan "units" here rather than let `ray.data.read_parquet` split the input: each unit is a
fixed row range of one input file (file, row group, offset, length), planned on the driver from
Parquet footers alone. Every output file is named after its unit (`part-00000.parquet`), so the
same input gives the same files with the same rows in the same order, no matter how Ray schedules
the work (design.md: idempotent reruns), and a row's position in its file is known, which is what
makes "first occurrence of a duplicated id wins" deterministic.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MISSING_ID = "missing_id"
EMPTY_TEXT = "empty_text"
DUPLICATE_ID = "duplicate_id"
REASONS = (MISSING_ID, EMPTY_TEXT, DUPLICATE_ID)
MANIFEST = "manifest.json"
QUARANTINE_DIR = "quarantine"


class InputError(ValueError):
    """Bad arguments or bad input; the CLI exits with code 2 and this message."""


# ---------------------------------------------------------------------------- file systems


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or an `s3://` URI.

    S3 settings come from the standard environment, which pyarrow (26) reads itself: the
    endpoint from AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (for MinIO, moto, R2, ...);
    credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) or the
    instance profile; the region from AWS_REGION / AWS_DEFAULT_REGION, else (on AWS proper) the
    bucket's own region, looked up once here.

    The filesystem is pickled to every Ray worker. The pickle carries the endpoint but not a
    region pyarrow looked up, nor the credentials (on purpose: no secrets in the object store), so
    the region is pinned here and workers must see the same AWS_* credentials (a local cluster
    inherits the driver's environment; a real one needs `runtime_env={"env_vars": ...}` or an
    instance profile, see README).
    """
    if "://" in uri:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{uri}: cannot open: {e}") from e
        if isinstance(fs, pafs.S3FileSystem):
            options = dict(fs.__reduce__()[1][0])
            if not options.get("region"):
                fs = pafs.S3FileSystem(**{**options, "region": fs.region})
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def check_output_location(fs: pafs.FileSystem, output: str, uri: str) -> None:
    """Fail before any work if the output cannot be written where it is asked to go: an S3
    bucket that does not exist (or cannot be seen with these credentials), or an output path
    that is an existing file. Without this, a typo in the bucket name surfaces only when the
    first writer task fails, after the whole input has been read and embedded."""
    if isinstance(fs, pafs.S3FileSystem):
        bucket = output.split("/", 1)[0]
        try:
            info = fs.get_file_info(bucket)
        except OSError as e:
            raise InputError(f"--output {uri}: cannot access bucket {bucket!r}: {e}") from e
        if info.type != pafs.FileType.Directory:
            raise InputError(f"--output {uri}: bucket {bucket!r} does not exist")
    try:
        info = fs.get_file_info(output)
    except OSError as e:
        raise InputError(f"--output {uri}: cannot stat: {e}") from e
    if info.type == pafs.FileType.File:
        raise InputError(f"--output {uri}: is a file, needs a directory")


def _is_data_file(path: str, base: str = "") -> bool:
    """A `.parquet` file with no `_`/`.` prefix on it or on any folder below `base`: the rule
    pyarrow datasets and Spark follow, so hidden temporaries and side folders such as an
    output's `_state/` are never taken for catalog data."""
    rel = path[len(base) :].lstrip("/") if base and path.startswith(base) else path
    parts = rel.split("/")
    return parts[-1].endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts)


def list_input_files(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of a file, directory (recursive) or glob, sorted by path."""
    fs, path = filesystem(uri)
    if any(c in path for c in "*?["):
        base = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except (FileNotFoundError, OSError) as e:
            raise InputError(f"--input {uri}: cannot list {base}: {e}") from e
        files = [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, path)]
    else:
        try:
            info = fs.get_file_info(path)
        except OSError as e:
            raise InputError(f"--input {uri}: cannot stat: {e}") from e
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"--input {uri}: no such file or directory")
        if info.type == pafs.FileType.File:
            files = [path]
        else:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = [i.path for i in infos if i.is_file and _is_data_file(i.path, path)]
    if not files:
        raise InputError(f"--input {uri}: no .parquet files found")
    return fs, sorted(files)


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Unit:
    """A row range of one input file; the unit of work, of output naming and of resume."""

    index: int
    path: str
    row_group: int
    offset: int  # first row within the row group
    length: int
    file_row: int  # index of the first row within the whole file (for duplicate resolution)

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"


def _check_schema(path: str, schema: pa.Schema, required: list[str]) -> None:
    for column in required:
        if column not in schema.names:
            raise InputError(
                f"{path}: missing column {column!r} (has: {', '.join(schema.names)}); "
                "check --id-column / --text-template"
            )
        t = schema.field(column).type
        if pa.types.is_nested(t) or pa.types.is_dictionary(t) and pa.types.is_nested(t.value_type):
            raise InputError(f"{path}: column {column!r} has nested type {t}; needs a scalar")


def plan_units(
    fs: pafs.FileSystem, files: list[str], id_column: str, columns: list[str], rows_per_unit: int
) -> tuple[list[Unit], pa.DataType, int]:
    """Read every footer, check the schema, cut row groups into units of <= rows_per_unit rows.

    Returns (units, id type, total rows). Raises InputError naming the file on an unreadable file,
    a missing column, or an id column whose type differs between files.
    """
    units: list[Unit] = []
    id_type = None
    rows_in = 0
    for path in files:
        try:
            with fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file: {e}") from e
        _check_schema(path, schema, [id_column, *columns])
        this_type = schema.field(id_column).type
        if id_type is None:
            id_type = this_type
        elif this_type != id_type:
            raise InputError(
                f"{path}: id column {id_column!r} is {this_type}, other files have {id_type}"
            )
        file_row = 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            for offset in range(0, n, rows_per_unit):
                length = min(rows_per_unit, n - offset)
                units.append(Unit(len(units), path, rg, offset, length, file_row + offset))
            file_row += n
        rows_in += meta.num_rows
    return units, id_type, rows_in


def read_unit(fs: pafs.FileSystem, unit: Unit, columns: list[str]) -> pa.Table:
    with fs.open_input_file(unit.path) as f:
        table = pq.ParquetFile(f).read_row_group(unit.row_group, columns=columns)
    return table.slice(unit.offset, unit.length)


def find_duplicate_rows(
    fs: pafs.FileSystem, files: list[str], id_column: str
) -> dict[str, np.ndarray]:
    """Rows whose id already occurred earlier, as {file: sorted row indices within the file}.

    "Earlier" is (file path order, row order): the first occurrence of an id is kept, like
    `pandas.DataFrame.drop_duplicates(keep="first")`. Only the id column is read; the driver holds
    one id plus two int32 per row, which is fine into the hundreds of millions of rows.
    """
    import pandas as pd

    frames = []
    for i, path in enumerate(files):
        try:
            with fs.open_input_file(path) as f:
                ids = pq.read_table(f, columns=[id_column]).column(0)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file: {e}") from e
        frames.append(
            pd.DataFrame(
                {
                    "id": ids.to_pandas(),
                    "file": np.full(len(ids), i, dtype=np.int32),
                    "row": np.arange(len(ids), dtype=np.int32),
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    df = df[df["id"].notna()]
    dup = df[df.duplicated(subset="id", keep="first")]
    return {
        files[i]: np.sort(group["row"].to_numpy()) for i, group in dup.groupby("file", sort=True)
    }


# ---------------------------------------------------------------------------- writing


def output_schema(id_field: pa.Field, dim: int, metadata: dict[str, str]) -> pa.Schema:
    """id (input name and type) + embedding fixed_size_list<float32>[dim], with model metadata."""
    return pa.schema(
        [id_field, pa.field("embedding", pa.list_(pa.float32(), dim))],
        metadata={k: str(v) for k, v in metadata.items()},
    )


def quarantine_schema(id_field: pa.Field) -> pa.Schema:
    return pa.schema(
        [id_field.with_nullable(True), pa.field("reason", pa.string()), ("text", pa.string())]
    )


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


def _tmp_name(path: str) -> str:
    head, name = posixpath.split(path)
    return posixpath.join(head, f".{name}.tmp-{uuid.uuid4().hex[:8]}")


def write_json_atomic(fs: pafs.FileSystem, obj: dict, path: str) -> None:
    tmp = _tmp_name(path)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(tmp) as out:
        out.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
    fs.move(tmp, path)


def read_manifest(fs: pafs.FileSystem, output: str) -> dict | None:
    path = posixpath.join(output, MANIFEST)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def clear_output(fs: pafs.FileSystem, output: str) -> None:
    """Remove what an earlier run of this job wrote (and only that): manifest first, so a reader
    never sees a manifest over a half-deleted output."""
    manifest = posixpath.join(output, MANIFEST)
    if fs.get_file_info(manifest).type != pafs.FileType.NotFound:
        fs.delete_file(manifest)
    for sub in (output, posixpath.join(output, QUARANTINE_DIR)):
        if fs.get_file_info(sub).type != pafs.FileType.Directory:
            continue
        for info in fs.get_file_info(pafs.FileSelector(sub)):
            name = posixpath.basename(info.path)
            if info.is_file and name.startswith("part-") and ".parquet" in name:
                fs.delete_file(info.path)


def unit_dict(unit: Unit) -> dict:
    return asdict(unit)
