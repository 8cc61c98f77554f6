"""WriteUnits: the last stage, one staged file per unit (+ its quarantine rows), atomically."""

from __future__ import annotations

import json
import posixpath
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from fashion_batch.embed import ledger
from fashion_batch.embed.incremental import DELTAS
from fashion_batch.embed.layout import (
    QUARANTINE_DIR,
    REASONS,
    STAGING_DIR,
    output_schema,
    quarantine_schema,
    unit_name,
)
from fashion_batch.embed.stages import ACTOR, DELTA, HASH, NODE, RAW, REASON, unpack
from fashion_batch.embed.state import RunState
from fashion_batch.io.atomic import write_atomic


class WriteUnits:
    """Write each unit's rows: `_staging/unit-NNNNN.parquet` and, if any,
    `_staging/quarantine/unit-NNNNN.parquet`, then the unit's content hashes and, last, its
    commit record (state.py: what resume trusts). publish.py turns staged units into parts.

    Returns one statistics row per unit. A unit whose row count is not what the planner said
    raises instead of writing, so a scheduling surprise can never produce a short file. Writing a
    unit twice (a retried task, a resumed run) writes the same files again: harmless.

    Args:
        filesystem, output: where to write.
        id_column: the id column name.
        unit_rows: {unit index: planned row count}.
        metadata: Parquet schema metadata for the part files (model, normalized).
        run_id: the run's fingerprint digest, recorded in each commit record.
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        output: str,
        id_column: str,
        unit_rows: dict[int, int],
        metadata: dict[str, str],
        run_id: str = "",
    ):
        self.fs = filesystem
        self.output = output
        self.id_column = id_column
        self.unit_rows = unit_rows
        self.metadata = metadata
        self.run_id = run_id

    def __call__(self, units: pa.Table) -> pa.Table:
        n = len(units)
        nodes = units.column(NODE).to_pylist() if NODE in units.column_names else [None] * n
        actors = units.column(ACTOR).to_pylist() if ACTOR in units.column_names else [None] * n
        host = _host()
        out = []
        for (u, rows), node, actor, note in zip(
            unpack(units), nodes, actors, ledger.notes(units), strict=True
        ):
            start = time.perf_counter()
            stats = self._write(u, rows, {"embed_node": node, "embed_actor": actor, "host": host})
            note["write_s"] = time.perf_counter() - start
            out.append({**stats, "ledger": json.dumps(note)})
        return pa.Table.from_pylist(out)

    def _write(self, unit: int, rows: pa.Table, where: dict) -> dict:
        if len(rows) != self.unit_rows[unit]:
            raise RuntimeError(f"unit {unit}: got {len(rows)} rows, planned {self.unit_rows[unit]}")
        name = posixpath.join(STAGING_DIR, unit_name(unit))
        id_field = rows.schema.field(self.id_column)
        reason = rows.column(REASON)
        good = rows.filter(pc.is_null(reason))
        dim = rows.schema.field("embedding").type.list_size
        meta = {**self.metadata, "dim": str(dim)}
        schema = output_schema(id_field, dim, meta)
        part = pa.table([good.column(self.id_column), good.column("embedding")], schema=schema)
        write_atomic(self.fs, part, posixpath.join(self.output, name))
        bad = rows.filter(pc.is_valid(reason))
        files = [name]
        if len(bad):
            qname = posixpath.join(STAGING_DIR, QUARANTINE_DIR, unit_name(unit))
            q = pa.table(
                [bad.column(self.id_column), bad.column(REASON), bad.column(RAW)],
                schema=quarantine_schema(id_field),
            )
            write_atomic(self.fs, q, posixpath.join(self.output, qname))
            files.append(qname)
        counts = {r: 0 for r in REASONS}
        for r in bad.column(REASON).to_pylist():
            counts[r] = counts.get(r, 0) + 1
        stats = {
            "unit": unit,
            "run": self.run_id,
            "rows_out": len(part),
            "rows_quarantined": len(bad),
            "dim": dim,
            "files": files,
            **{f"q_{k}": v for k, v in counts.items()},
        }
        if DELTA in good.column_names:
            deltas = good.column(DELTA).to_pylist()
            stats.update({f"d_{k}": deltas.count(k) for k in DELTAS})
        state = RunState(self.fs, self.output)
        state.write_hashes(name, good.column(self.id_column), good.column(HASH))
        state.commit(stats)
        # Where it ran goes to the manifest, not the commit record: the same command must leave
        # the same bytes in _state/ too, and node and actor ids differ on every run.
        return {**stats, **where}


def _host() -> str | None:
    """The IP address of the node this write task runs on (None outside Ray): the job checks that
    a local OUTPUT was written from one host only (pipeline.check_one_host)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:
        pass
    return None
