"""`--sink`: load a finished output into a vector database, after manifest.json is written.

The Parquet output is the source of truth and commits first; the sink is a copy of it kept for
serving. So a sink failure never touches the output: the run fails (exit 1) saying that the
output is complete, and re-running the same command retries only the sink (a finished output
returns before embedding anything, and syncs its sink unless the table already holds exactly this
snapshot). What the sync did is added to manifest.json as "sink" (docs/sinks.md).

lancedb is imported only in the run's sidecar process (runtime/sidecar.py), started with the
job: its import overlaps planning and Ray's start-up instead of adding to the run, and the
driver never forks Ray's processes with lancedb's after-fork hook installed.

    Sink(config, side)         the location overlaps no input or output (exit 2); the sidecar
                               opens the table at once
    check(config, plan)        in the driver, before any write: the passthrough columns, the
                               model's similarity function (exit 2)
    Sink.checked()             before the first write: the table is ours (exit 2)
    Sink.sync(plan, manifest)  after the manifest: the snapshot, one part file at a time
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fashion_batch.embed.layout import MANIFEST, embedding_files
from fashion_batch.embed.plan import Plan, read_unit
from fashion_batch.embed.publish import units_of
from fashion_batch.errors import InputError, UserError
from fashion_batch.io.atomic import write_json_atomic
from fashion_batch.io.fs import filesystem, redact
from fashion_batch.runtime import faults
from fashion_batch.runtime.sidecar import Sidecar, SidecarError
from fashion_batch.sinks import SinkTarget, parse_sink, require_lancedb


class SinkError(RuntimeError):
    """The sink failed after the Parquet output committed (exit 1, like any failure)."""


class Sink:
    """`--sink` for one run, in the run's sidecar process (embed/job.py starts it). Only the
    module-level functions below run there (`check_table`, `sync`), with the config and plan
    pickled."""

    def __init__(self, config, side: Sidecar):
        self.config = config
        _check_no_overlap(config, parse_sink(config.sink))  # before anything opens the location
        self._side = side
        self._checked = side.submit(check_table, config)

    def checked(self) -> None:
        """Wait for the table check submitted at the start (an InputError for a foreign one)."""
        try:
            self._checked.result()
        except SidecarError as e:
            raise InputError(f"--sink {self.config.sink}: cannot open the database: {e}") from e

    def sync(self, plan: Plan, manifest: dict) -> dict:
        """`sync` in the sidecar; the manifest with "sink" added."""
        try:
            return self._side.submit(sync, self.config, plan, manifest).result()
        except SidecarError as e:
            raise _failed(self.config, e) from e


def check(config, plan: Plan) -> SinkTarget | None:
    """What can be wrong with `--sink` and is known from the plan: the passthrough columns and
    the model's similarity function (exit 2; `Sink` checked the overlap with the input and
    output). Imports no lancedb: only the sidecar does."""
    if not config.sink:
        return None
    from fashion_batch.sinks import lancedb as sink

    target = parse_sink(config.sink)
    require_lancedb()
    _passthrough_fields(config, plan)
    sink.metric_for(_similarity(_model_dir(plan)))
    return target


def check_table(config) -> None:
    """The sink's database opens, and a table of that name, if there is one, is one that
    fashion-batch wrote (exit 2 before the first write, not after the embedding). Runs in the
    run's sidecar (`Sink`)."""
    from fashion_batch.sinks import lancedb as sink

    target = parse_sink(config.sink)
    if not target.s3 and not Path(target.location).exists():
        return  # no database yet, so no table; connecting would create the directory
    try:
        table = sink.open_table(sink.connect(target), config.sink_table)
    except UserError:
        raise
    except Exception as e:
        raise InputError(f"--sink {target.uri}: cannot open the database: {e}") from e
    if table is not None:
        sink.check_ours(table, config.sink_table)


def sync(config, plan: Plan, manifest: dict) -> dict:
    """Load the finished output into the sink; return the manifest with "sink" added (and
    written). Raises SinkError (exit 1) naming the complete output and how to retry. Runs in the
    run's sidecar (`Sink.sync`)."""
    from fashion_batch.sinks import lancedb_sync as sink

    target = parse_sink(config.sink)
    try:
        faults.sink_hook()
        snapshot = _snapshot(config, plan, manifest)
        record = sink.sync(target, config.sink_table, snapshot, config.sink_index_threshold)
    except UserError as e:
        raise InputError(f"--sink {target.uri}: {e}. {_complete(config)}") from e
    except Exception as e:
        raise _failed(config, e) from e
    before = manifest.get("sink") or {}
    if record["action"] == "current" and (before.get("uri"), before.get("table")) == (
        record["uri"],
        record["table"],
    ):
        return manifest  # a rerun: the table already holds this output, as recorded
    manifest = {**manifest, "sink": record}
    write_json_atomic(plan.out_fs, manifest, posixpath.join(plan.output, MANIFEST))
    return manifest


def _complete(config) -> str:
    return f"The Parquet output is complete ({_source(config)}/{MANIFEST}) and unaffected"


def _failed(config, e: Exception) -> SinkError:
    return SinkError(
        f"--sink {parse_sink(config.sink).uri}: loading table {config.sink_table!r} failed: "
        f"{type(e).__name__}: {e}. {_complete(config)}; re-run the same command to retry the "
        "sink only (a finished output skips the embedding)"
    )


def _snapshot(config, plan: Plan, manifest: dict):
    """The output as a sink.Snapshot: each part file's id and embedding, plus the passthrough
    columns read from the units of input the part was made from (first occurrence of an id, as
    the job kept it), one part at a time."""
    from fashion_batch.sinks.lancedb import VECTOR, metric_for
    from fashion_batch.sinks.lancedb_sync import Snapshot

    id_column = manifest["id_column"]
    passthrough = _passthrough_fields(config, plan)
    units = {u.index: u for u in plan.units}
    spans = units_of(manifest)
    parts = embedding_files(manifest["files"])
    id_type = _id_type(plan, parts, id_column)
    schema = pa.schema(
        [
            pa.field(id_column, id_type, nullable=False),
            pa.field(VECTOR, pa.list_(pa.float32(), manifest["dim"])),
            *passthrough,
        ]
    )

    def batches():
        for name in parts:
            with plan.out_fs.open_input_file(posixpath.join(plan.output, name)) as f:
                part = pq.read_table(f, columns=[id_column, VECTOR])
            columns = [part.column(id_column), part.column(VECTOR)]
            if passthrough:
                names = [f.name for f in passthrough]
                source = pa.concat_tables(
                    read_unit(plan.in_fs, units[u], [id_column, *names]) for u in spans[name]
                )
                source_ids = _decoded(source.column(id_column).combine_chunks())
                rows = pc.index_in(_decoded(part.column(id_column).combine_chunks()), source_ids)
                columns += [_decoded(source.column(n)).take(rows) for n in names]
            yield from pa.Table.from_arrays(columns, schema=schema).to_batches()

    model = manifest["model"]
    meta = {
        "model": model["name"],
        "model_sha256": model["sha256"],
        "normalized": str(manifest["normalized"]).lower(),
        "metric": metric_for(_similarity(_model_dir(plan))),
        "id_column": id_column,
        "text_template": manifest.get("text_template", ""),
        "source": _source(config),
        "run_digest": manifest.get("run_digest", ""),
        "finished_at": manifest["finished_at"],
    }
    return Snapshot(schema, batches, manifest["rows_out"], meta)


def _source(config) -> str:
    """The output's URI as recorded (credentials redacted)."""
    return redact(config.output).rstrip("/")


def _id_type(plan: Plan, parts: list[str], id_column: str) -> pa.DataType:
    """The id column's type in the part files (the input's, dictionary decoded)."""
    for name in parts[:1]:
        with plan.out_fs.open_input_file(posixpath.join(plan.output, name)) as f:
            t = pq.read_schema(f).field(id_column).type
        return t.value_type if pa.types.is_dictionary(t) else t
    return pa.int64()  # an empty output: any type holds no rows


def _decoded(array):
    """A dictionary-encoded column as its values (LanceDB stores plain columns)."""
    if pa.types.is_dictionary(array.type):
        return array.cast(array.type.value_type)
    return array


def _passthrough_fields(config, plan: Plan) -> list[pa.Field]:
    """The `--sink-columns` fields, read from the input files' footers: every file must have each
    column, with one type; the id and embedding columns are not passthrough."""
    names = config.sink_column_names
    for name in names:
        if name in (config.id_column, "embedding"):
            raise InputError(f"--sink-columns: {name!r} is always in the table; list other columns")
    if not names:
        return []
    fields: dict[str, pa.Field] = {}
    for path in sorted({u.path for u in plan.units}):
        with plan.in_fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
        for name in names:
            if name not in schema.names:
                raise InputError(
                    f"--sink-columns: {path} has no column {name!r} "
                    f"(has: {', '.join(schema.names)})"
                )
            field = schema.field(name).remove_metadata()
            if pa.types.is_dictionary(field.type):
                field = field.with_type(field.type.value_type)
            if name in fields and not fields[name].type.equals(field.type):
                raise InputError(
                    f"--sink-columns: column {name!r} is {field.type} in {path}, "
                    f"{fields[name].type} in other files"
                )
            fields[name] = field
    return [fields[n] for n in names]


def _model_dir(plan: Plan) -> str:
    return (plan.model or plan.finished["model"])["path"]


def _similarity(model_dir: str) -> str | None:
    """The model's similarity function name (sentence-transformers' config; None = cosine)."""
    path = Path(model_dir) / "config_sentence_transformers.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("similarity_fn_name")


def _check_no_overlap(config, target: SinkTarget) -> None:
    """The table lives outside what the job reads and writes: an OUTPUT holds only the output
    contract (and is replaced by --overwrite), an input is never written."""
    from fashion_batch.io.inputs import glob_base

    sink = target.location.removeprefix("s3://")
    for flag, uri in (("--output", config.output), ("--input", config.input)):
        fs, path = filesystem(uri)
        path = glob_base(path)
        if (fs.type_name == "s3") != target.s3:
            continue
        if sink == path or sink.startswith(path + "/") or path.startswith(sink + "/"):
            raise InputError(
                f"--sink {target.uri} overlaps {flag} {redact(uri)}: the table must live "
                "outside the job's input and output"
            )
