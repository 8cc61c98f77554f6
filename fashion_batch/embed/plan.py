"""Planning: cut the input into work units before any work starts.

Why plan "units" here rather than let `ray.data.read_parquet` split the input: each unit is a
fixed row range of one input file (file, row group, offset, length), planned on the driver from
Parquet footers alone. Every staged file is named after its unit (`_staging/unit-00000.parquet`)
and every published part holds a fixed run of consecutive units (publish.py), so the same input
gives the same files with the same rows in the same order, no matter how Ray schedules the work
(design.md: idempotent reruns), and a row's position in its file is known, which is what makes
"first occurrence of a duplicated id wins" deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.layout import unit_name
from fashion_batch.errors import InputError
from fashion_batch.io.inputs import check_schema


@dataclass(frozen=True)
class Unit:
    """A row range of one input file; the unit of work and of resume."""

    index: int
    path: str
    row_group: int
    offset: int  # first row within the row group
    length: int
    file_row: int  # index of the first row within the whole file (for duplicate resolution)

    @property
    def name(self) -> str:
        """The unit's staged file name (layout.unit_name)."""
        return unit_name(self.index)


# A small catalog is still cut into enough units to keep every actor busy and balance the tail
# (a 3,000-row file as one unit of 4,096 leaves all actors but one idle), but no unit is so small
# that its part file, commit record and scheduling cost more than embedding its rows.
MIN_UNITS = 16
MIN_UNIT_ROWS = 256


def unit_rows(total_rows: int, rows_per_unit: int) -> int:
    """Rows per unit: `rows_per_unit` (--rows-per-part, the most), lowered for a small input so
    there are at least MIN_UNITS units of at least MIN_UNIT_ROWS rows. A function of the input
    alone, never of the cluster: a resumed run cuts the same units on any cluster shape."""
    return min(rows_per_unit, max(MIN_UNIT_ROWS, -(-total_rows // MIN_UNITS)))


def plan_units(
    fs: pafs.FileSystem, files: list[str], id_column: str, columns: list[str], rows_per_unit: int
) -> tuple[list[Unit], pa.DataType, int]:
    """Read every footer, check the schema, cut row groups into units of <= rows_per_unit rows
    (fewer for a small input: unit_rows).

    Returns (units, id type, total rows). Raises InputError naming the file on an unreadable file,
    a missing column, or an id column whose type differs between files.
    """
    id_type = None
    metas = []
    for path in files:
        try:
            with fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file: {e}") from e
        check_schema(path, schema, [id_column, *columns])
        this_type = schema.field(id_column).type
        if id_type is None:
            id_type = this_type
        elif this_type != id_type:
            raise InputError(
                f"{path}: id column {id_column!r} is {this_type}, other files have {id_type}"
            )
        metas.append((path, [meta.row_group(rg).num_rows for rg in range(meta.num_row_groups)]))
    rows_in = sum(sum(groups) for _, groups in metas)
    size = unit_rows(rows_in, rows_per_unit)
    units: list[Unit] = []
    for path, groups in metas:
        file_row = 0
        for rg, n in enumerate(groups):
            for offset in range(0, n, size):
                length = min(size, n - offset)
                units.append(Unit(len(units), path, rg, offset, length, file_row + offset))
            file_row += n
    return units, id_type, rows_in


def read_unit(fs: pafs.FileSystem, unit: Unit, columns: list[str]) -> pa.Table:
    with fs.open_input_file(unit.path) as f:
        table = pq.ParquetFile(f).read_row_group(unit.row_group, columns=columns)
    return table.slice(unit.offset, unit.length)


def find_duplicate_rows(
    fs: pafs.FileSystem, files: list[str], id_column: str
) -> dict[str, np.ndarray]:
    """Rows whose id already occurred earlier, as {file: sorted row indices within the file}.

    "Earlier" is (file path order, row order): the first occurrence of an id is kept. Ids stay
    Arrow values of their own type throughout (a float64 detour would merge distinct int64 ids
    above 2**53); null ids and NaN/inf float ids are not ids (quarantined as missing_id and
    invalid_id), so they are never duplicates. Only the id column is read; the driver holds one id
    plus one int64 per row.
    """
    tables = []
    for i, path in enumerate(files):
        try:
            with fs.open_input_file(path) as f:
                ids = pq.read_table(f, columns=[id_column]).column(0).combine_chunks()
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file: {e}") from e
        if pa.types.is_dictionary(ids.type):
            ids = ids.dictionary_decode()
        order = (np.int64(i) << 32) + np.arange(len(ids), dtype=np.int64)  # (file, row) packed
        tables.append(pa.table({"id": ids, "order": order}).filter(valid_ids(ids)))
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    firsts = table.group_by("id", use_threads=False).aggregate([("order", "min")])
    later = table.filter(pc.invert(pc.is_in(table.column("order"), firsts.column("order_min"))))
    order = np.sort(later.column("order").to_numpy())
    file_index, rows = order >> 32, order & 0xFFFFFFFF
    return {files[f]: rows[file_index == f] for f in np.unique(file_index)}


def valid_ids(ids: pa.Array) -> pa.Array:
    """True where an id is an id: not null, and finite for a float id column."""
    valid = pc.is_valid(ids)
    if pa.types.is_floating(ids.type):
        valid = pc.and_(valid, pc.fill_null(pc.is_finite(ids), False))
    return valid


def unit_dict(unit: Unit) -> dict:
    return asdict(unit)


def limit_units(units: list[Unit], limit: int) -> tuple[list[Unit], int]:
    """The first `limit` rows (file, row order) as units, and their row count."""
    kept, total = [], 0
    for u in units:
        if total >= limit:
            break
        take = min(u.length, limit - total)
        kept.append(Unit(u.index, u.path, u.row_group, u.offset, take, u.file_row))
        total += take
    return kept, total


@dataclass
class Plan:
    """Everything an embed run decided before writing anything (`make_plan`)."""

    in_fs: pafs.FileSystem
    units: list[Unit]
    rows_in: int
    out_fs: pafs.FileSystem
    output: str
    finished: dict | None  # the manifest, if OUTPUT is a finished output
    # Not planned when OUTPUT is finished and --overwrite is not given (the run returns early):
    duplicates: dict[str, np.ndarray] | None = None  # {input file: rows whose id came earlier}
    model: dict | None = None  # name, path, sha256
    previous: object | None = None  # incremental.Previous
    fingerprint: dict | None = None
    run_state: object | None = None  # state.RunState


def make_plan(config) -> Plan:
    """Check everything that can be wrong with the input and plan the units; write nothing.

    Raises InputError / ModelError (exit 2) for a bad model, input, output or `--previous`; for
    a template the input cannot fill (text.check_template); for an OUTPUT that overlaps the input
    or `--previous`; for an OUTPUT holding another run's unfinished files or another job's
    finished output (unless `--overwrite`); and for an OUTPUT holding files no record of ours
    lists.
    """
    from fashion_batch.embed import state
    from fashion_batch.embed.config import fingerprint_settings
    from fashion_batch.embed.incremental import load_previous
    from fashion_batch.embed.layout import read_manifest
    from fashion_batch.encoders.models import resolve_model
    from fashion_batch.encoders.trust import check_safetensors_only, model_digest
    from fashion_batch.io.fs import check_output_location, filesystem
    from fashion_batch.io.inputs import list_input_files
    from fashion_batch.text import check_template

    model_dir = resolve_model(config.model)
    check_safetensors_only(model_dir)  # here, not first in the actors after the catalog is read
    in_fs, files = list_input_files(config.input)
    units, id_type, rows_in = plan_units(
        in_fs, files, config.id_column, config.columns[1:], config.rows_per_unit
    )
    if config.limit is not None:
        units, rows_in = limit_units(units, config.limit)
    for template in (config.template, config.fix):
        if template is not None:
            check_template(template, in_fs, sorted({u.path for u in units}))
    out_fs, output = filesystem(config.output)
    check_output_location(out_fs, output, config.output)
    check_no_overlap(config, out_fs, output)
    model = {"name": config.model, "path": model_dir, "sha256": model_digest(model_dir)}
    settings = fingerprint_settings(config)
    previous = None
    if config.previous is not None:
        previous = load_previous(config.previous, model["sha256"], settings, id_type)
    identity = previous.identity if previous else None
    fp = state.fingerprint(in_fs, files, model["sha256"], settings, identity)
    run_state = state.RunState(out_fs, output)
    finished = read_manifest(out_fs, output)
    if finished is not None and not config.overwrite:
        if finished.get("run_digest") != fp["digest"]:
            raise InputError(run_state.another_job(fp))
        return Plan(in_fs, units, rows_in, out_fs, output, finished)  # the same run, done
    if finished is None:
        run_state.check(fp, config.overwrite)  # another run's unfinished output: exit 2 here
    duplicates = find_duplicate_rows(in_fs, sorted({u.path for u in units}), config.id_column)
    return Plan(
        in_fs, units, rows_in, out_fs, output, finished, duplicates, model, previous, fp, run_state
    )


def check_no_overlap(config, out_fs: pafs.FileSystem, output: str) -> None:
    """Refuse an OUTPUT equal to, inside or containing the input or `--previous`: the job would
    read what it writes, or its tidying could touch the data it reads."""
    from fashion_batch.io.fs import filesystem
    from fashion_batch.io.inputs import glob_base

    for flag, uri in (("--input", config.input), ("--previous", config.previous)):
        if uri is None:
            continue
        fs, path = filesystem(uri)
        path = glob_base(path)
        if fs.type_name != out_fs.type_name:
            continue
        if path == output or path.startswith(output + "/") or output.startswith(path + "/"):
            what = "--previous must be another output than --output (it is read)"
            if flag == "--input":
                what = "the output must be a directory of its own, outside what the job reads"
            raise InputError(f"--output {config.output} overlaps {flag} {uri}: {what}")
