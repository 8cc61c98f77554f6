"""The embed job's stages: small callables over a `pa.Table`, each testable on a five-row table
without Ray (datatrove style: a step does one thing; where it runs is decided in embed.run).

    PrepareUnits (CPU tasks)  read a unit's row range, render + clean text, mark quarantined rows
    EmbedUnits   (actors)     model loaded once per actor, GPU when present; encodes ok rows
    WriteUnits   (CPU tasks)  one part file per unit (+ its quarantine rows), atomically

Between stages a unit travels as one row holding its rows as an Arrow IPC payload (`pack`). Ray
Data re-cuts batches freely (and insists on a batch_size for GPU actors), but it never splits a
row: so every stage sees whole units, and a unit's output file always holds exactly its rows.
The row-level classes (`PrepareText`, `Embed`) are what the unit-level ones call.
"""

from __future__ import annotations

import logging
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from fashion_batch import catalog
from fashion_batch.catalog import DUPLICATE_ID, EMPTY_TEXT, MISSING_ID
from fashion_batch.text import Template

log = logging.getLogger(__name__)

UNIT = "__unit"
ROW = "__row"  # row index within the input file
PATH = "__path"  # the input file
TEXT = "__text"  # cleaned text, what the model sees
RAW = "__raw"  # template rendered from uncleaned fields; kept for quarantined rows only
REASON = "__reason"  # null = embed this row
PAYLOAD = "payload"


def pack(unit: int, rows: pa.Table) -> dict:
    """One unit's rows as a single row: {"__unit": i, "payload": Arrow IPC bytes}."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return {UNIT: unit, PAYLOAD: sink.getvalue().to_pybytes()}


def unpack(units: pa.Table) -> list[tuple[int, pa.Table]]:
    out = []
    for unit, payload in zip(
        units.column(UNIT).to_pylist(), units.column(PAYLOAD).to_pylist(), strict=True
    ):
        out.append((unit, pa.ipc.open_stream(pa.py_buffer(payload)).read_all()))
    return out


def packed_table(rows: list[dict]) -> pa.Table:
    return pa.table(
        {
            UNIT: pa.array([r[UNIT] for r in rows], pa.int32()),
            PAYLOAD: pa.array([r[PAYLOAD] for r in rows], pa.large_binary()),
        }
    )


class PrepareText:
    """Render and clean each row's text and decide whether it is embedded or quarantined.

    Args:
        template: the text template ("{title}. {description}").
        id_column: the id column.
        duplicate_rows: {input file: sorted row indices} of rows whose id occurred earlier
            (catalog.find_duplicate_rows); they are quarantined as duplicate_id.
    """

    def __init__(self, template: str, id_column: str, duplicate_rows: dict | None = None):
        self.template = Template(template)
        self.id_column = id_column
        self.duplicate_rows = duplicate_rows or {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = len(batch)
        columns = batch.select(self.template.columns).to_pydict()
        texts = self.template.render_columns(columns, n)
        reasons: list[str | None] = [None] * n
        duplicated = self._duplicated(batch)
        ids_null = batch.column(self.id_column).is_null().to_pylist()
        for i in range(n):
            if ids_null[i]:
                reasons[i] = MISSING_ID
            elif duplicated[i]:
                reasons[i] = DUPLICATE_ID
            elif not texts[i]:
                reasons[i] = EMPTY_TEXT
        # The raw render is only kept for quarantined rows, so only they pay for it.
        names = self.template.columns
        keep_raw = [
            self.template.render({c: columns[c][i] for c in names}, clean=False) if reason else None
            for i, reason in enumerate(reasons)
        ]
        out = batch.select([self.id_column])
        out = out.append_column(TEXT, pa.array(texts, pa.string()))
        out = out.append_column(RAW, pa.array(keep_raw, pa.string()))
        return out.append_column(REASON, pa.array(reasons, pa.string()))

    def _duplicated(self, batch: pa.Table) -> np.ndarray:
        flags = np.zeros(len(batch), dtype=bool)
        if not self.duplicate_rows or PATH not in batch.column_names:
            return flags
        paths = batch.column(PATH).to_numpy(zero_copy_only=False)
        rows = batch.column(ROW).to_numpy()
        for path in np.unique(paths):
            dup = self.duplicate_rows.get(path)
            if dup is not None:
                mine = paths == path
                flags[mine] = np.isin(rows[mine], dup)
        return flags


class PrepareUnits:
    """Read each unit's row range (projected to the job's columns) and run PrepareText on it.

    Args:
        filesystem: the input filesystem (pyarrow filesystems pickle, S3 included).
        columns: id column + template columns.
        template, id_column, duplicate_rows: as for PrepareText.
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        columns: list[str],
        template: str,
        id_column: str,
        duplicate_rows: dict | None = None,
    ):
        self.fs = filesystem
        self.columns = columns
        self.prepare = PrepareText(template, id_column, duplicate_rows)

    def __call__(self, units: pa.Table) -> pa.Table:
        out = []
        for spec in units.to_pylist():
            unit = catalog.Unit(**spec)
            t = catalog.read_unit(self.fs, unit, self.columns)
            rows = np.arange(unit.file_row, unit.file_row + len(t), dtype=np.int64)
            t = t.append_column(ROW, pa.array(rows))
            t = t.append_column(PATH, pa.array([unit.path] * len(t), pa.string()))
            out.append(pack(unit.index, self.prepare(t)))
        return packed_table(out)


class Embed:
    """Encode the batch's non-quarantined rows; the model is loaded once, in `__init__`.

    Returns the batch without the text column and with `embedding`, a
    `fixed_size_list<float32>[D]` built here (a 2-D numpy return would become Ray's tensor
    extension type, which Polars and DuckDB read badly). Quarantined rows get a null embedding.

    Args:
        model: a `--model` value, resolved on the actor's node.
        batch_size: texts per forward pass.
        precision: auto | fp32 | fp16 | bf16.
        normalize: L2-normalize the embeddings.
        threads: torch intra-op threads (a CPU actor must not take every core: reads starve).
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 64,
        precision: str = "auto",
        normalize: bool = False,
        threads: int | None = None,
    ):
        import torch

        from fashion_batch.encoder import Encoder, load_model, pick_device

        if threads:
            torch.set_num_threads(threads)
        device = pick_device()
        if device == "cpu" and _assigned_gpus():
            log.warning("actor was given a GPU but CUDA is unavailable; running on CPU")
        self.encoder = Encoder(load_model(model, device, precision), batch_size, normalize)
        self.dim = self.encoder.dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pc.is_null(batch.column(REASON)).to_numpy(zero_copy_only=False)
        texts = batch.column(TEXT).to_pylist()
        vectors = np.zeros((len(batch), self.dim), dtype=np.float32)  # (n, D)
        idx = np.flatnonzero(ok)
        if len(idx):
            vectors[idx] = self.encoder.encode([texts[i] for i in idx])  # (n_ok, D)
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), self.dim, mask=pa.array(~ok)
        )
        return batch.drop_columns([TEXT]).append_column("embedding", embedding)


def _assigned_gpus() -> list:
    try:
        import ray

        return ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # outside a Ray worker
        return []


class EmbedUnits(Embed):
    """Embed, one packed unit at a time (the class Ray's actor pool instantiates)."""

    def __call__(self, units: pa.Table) -> pa.Table:
        return packed_table(
            [pack(u, super(EmbedUnits, self).__call__(t)) for u, t in unpack(units)]
        )


class WriteUnits:
    """Write each unit's rows: `part-NNNNN.parquet` and, if any, `quarantine/part-NNNNN.parquet`.

    Returns one statistics row per unit. A unit whose row count is not what the planner said
    raises instead of writing, so a scheduling surprise can never produce a short file.

    Args:
        filesystem, output: where to write.
        id_column: the id column name.
        unit_rows: {unit index: planned row count}.
        metadata: Parquet schema metadata for the part files (model, normalized).
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        output: str,
        id_column: str,
        unit_rows: dict[int, int],
        metadata: dict[str, str],
    ):
        self.fs = filesystem
        self.output = output
        self.id_column = id_column
        self.unit_rows = unit_rows
        self.metadata = metadata

    def __call__(self, units: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self._write(u, rows) for u, rows in unpack(units)])

    def _write(self, unit: int, rows: pa.Table) -> dict:
        if len(rows) != self.unit_rows[unit]:
            raise RuntimeError(f"unit {unit}: got {len(rows)} rows, planned {self.unit_rows[unit]}")
        name = catalog.Unit(unit, "", 0, 0, 0, 0).name
        id_field = rows.schema.field(self.id_column)
        reason = rows.column(REASON)
        good = rows.filter(pc.is_null(reason))
        dim = rows.schema.field("embedding").type.list_size
        meta = {**self.metadata, "dim": str(dim)}
        schema = catalog.output_schema(id_field, dim, meta)
        part = pa.table([good.column(self.id_column), good.column("embedding")], schema=schema)
        catalog.write_atomic(self.fs, part, posixpath.join(self.output, name))
        bad = rows.filter(pc.is_valid(reason))
        files = [name]
        if len(bad):
            qname = posixpath.join(catalog.QUARANTINE_DIR, name)
            q = pa.table(
                [bad.column(self.id_column), bad.column(REASON), bad.column(RAW)],
                schema=catalog.quarantine_schema(id_field),
            )
            catalog.write_atomic(self.fs, q, posixpath.join(self.output, qname))
            files.append(qname)
        counts = {r: 0 for r in catalog.REASONS}
        for r in bad.column(REASON).to_pylist():
            counts[r] = counts.get(r, 0) + 1
        return {
            "unit": unit,
            "rows_out": len(part),
            "rows_quarantined": len(bad),
            "dim": dim,
            "files": files,
            **{f"q_{k}": v for k, v in counts.items()},
        }
