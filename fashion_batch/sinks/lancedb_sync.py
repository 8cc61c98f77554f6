"""Syncing a LanceDB sink table with one finished output (sinks/lancedb.py is the table itself:
connection, metadata, index parameters, search).

    sync(target, table, snapshot, threshold)
      → create the table, or merge the snapshot into it by id (merge_insert: update rows whose
        vector or passthrough values differ, insert new ids, delete ids the snapshot lacks), or
        replace it when it holds another model's vectors or other columns
      → index: none below `threshold` rows (exact search); IVF_HNSW_SQ built once the table
        reaches it, updated incrementally (optimize) on later syncs, retrained when the table has
        doubled since it was trained
      → {counts, index, ...}: the manifest's "sink"
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from fashion_batch.errors import InputError
from fashion_batch.sinks import SinkTarget
from fashion_batch.sinks.lancedb import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    META,
    REBUILD_GROWTH,
    VECTOR,
    check_ours,
    connect,
    index_params,
    open_table,
    set_meta,
    table_meta,
    vector_index,
)


@dataclass
class Snapshot:
    """What a sync loads: one finished output.

    Attributes:
        schema: id (its exact Arrow type), embedding (fixed_size_list<float32>[dim]), passthrough.
        batches: returns a fresh iterator over the snapshot's rows (one part file at a time).
        rows: rows in the snapshot (the output's rows_out).
        meta: what made it (model, model_sha256, normalized, metric, id_column, source,
            run_digest, finished_at), written to the table's embedding field metadata.
    """

    schema: pa.Schema
    batches: Callable[[], Iterator[pa.RecordBatch]]
    rows: int
    meta: dict[str, str]

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.schema, self.batches())

    def table_schema(self) -> pa.Schema:
        i = self.schema.get_field_index(VECTOR)
        field = self.schema.field(i).with_metadata({META + k: v for k, v in self.meta.items()})
        return self.schema.set(i, field)


_SAME = ("model_sha256", "normalized", "metric", "id_column")


def decide(table, snapshot: Snapshot, name: str) -> tuple[str, str | None]:
    """What a sync of `snapshot` does to `table` (None: no such table): ("create" | "merge" |
    "replace" | "current", reason). Raises InputError for a table fashion-batch did not write
    and for one that holds a newer snapshot (an older output must not roll it back)."""
    if table is None:
        return "create", None
    meta = check_ours(table, name)
    if meta.get("finished_at", "") > snapshot.meta["finished_at"]:
        raise InputError(
            f"table {name!r} holds a newer snapshot ({meta.get('source')}, finished "
            f"{meta.get('finished_at')}) than this output (finished "
            f"{snapshot.meta['finished_at']}); an older output never rolls it back"
        )
    changed = [k for k in _SAME if meta.get(k) != snapshot.meta[k]]
    ours = pa.schema([f.remove_metadata() for f in table.schema]).remove_metadata()
    theirs = pa.schema([f.remove_metadata() for f in snapshot.schema]).remove_metadata()
    if not ours.equals(theirs):
        changed.append("columns")
    if changed:
        return "replace", "differs in " + ", ".join(changed)
    if (
        meta.get("run_digest") == snapshot.meta["run_digest"]
        and meta.get("finished_at") == snapshot.meta["finished_at"]
        and table.count_rows() == snapshot.rows
    ):
        return "current", None
    return "merge", None


def changed_condition(columns: list[str]) -> str:
    """merge_insert's update condition: the vector or a passthrough value differs (a null that
    became a value or the reverse included; Lance's SQL has no IS DISTINCT FROM)."""
    terms = [f"target.{VECTOR} != source.{VECTOR}"]
    for c in columns:
        q = "`" + c.replace("`", "``") + "`"
        terms.append(f"target.{q} != source.{q}")
        terms.append(f"(target.{q} IS NULL) != (source.{q} IS NULL)")
    return " OR ".join(terms)


def sync(target: SinkTarget, name: str, snapshot: Snapshot, threshold: int) -> dict:
    """Make table `name` at `target` hold exactly `snapshot`; return what was done (recorded in
    the manifest as "sink")."""
    started = time.perf_counter()
    db = connect(target)
    table = open_table(db, name)
    action, reason = decide(table, snapshot, name)
    id_column = snapshot.meta["id_column"]
    counts = {"inserted": 0, "updated": 0, "deleted": 0}
    if action in ("create", "replace"):
        before = table.count_rows() if table is not None else 0
        mode = "overwrite" if table is not None else "create"
        table = db.create_table(
            name, data=snapshot.reader(), schema=snapshot.table_schema(), mode=mode
        )
        counts.update(inserted=table.count_rows(), deleted=before)
    elif action == "merge":
        passthrough = [c for c in snapshot.schema.names if c not in (id_column, VECTOR)]
        result = (
            table.merge_insert(id_column)
            .when_matched_update_all(where=changed_condition(passthrough))
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete()
            .execute(snapshot.reader())
        )
        counts.update(
            inserted=result.num_inserted_rows,
            updated=result.num_updated_rows,
            deleted=result.num_deleted_rows,
        )
        keys = ("source", "run_digest", "finished_at", "model")
        set_meta(table, {k: snapshot.meta[k] for k in keys})
    rows = table.count_rows()
    if rows != snapshot.rows:
        raise RuntimeError(f"table {name!r} holds {rows} rows after the sync, not {snapshot.rows}")
    index = maintain_index(table, snapshot.meta["metric"], threshold, merged=action == "merge")
    return {
        "uri": target.uri,
        "table": name,
        "action": action,
        **({"reason": reason} if reason else {}),
        "rows": rows,
        "columns": snapshot.schema.names,
        **counts,
        "unchanged": rows - counts["inserted"] - counts["updated"],
        "metric": snapshot.meta["metric"],
        "version": table.version,
        "index": index,
        "seconds": round(time.perf_counter() - started, 3),
    }


# ------------------------------------------------------------------------------ index


def maintain_index(table, metric: str, threshold: int, merged: bool) -> dict:
    """Build, update or retrain the ANN index; return what the manifest records.

    No index below `threshold` rows: LanceDB searches every vector (exact), which needs no
    tuning and no build. At `threshold` rows the index is built; after a merge `optimize`
    compacts the merged fragments and adds the new rows to the existing index (keeping 7 days of
    table versions, LanceDB's default), as it does on a re-run that finds unindexed rows (a sync
    killed before this step); once the table has grown REBUILD_GROWTH times past the rows the
    index was trained on, the index is retrained."""
    from lancedb.index import HnswSq

    rows = table.count_rows()
    existing = vector_index(table)
    meta = table_meta(table)
    behind = existing is not None and table.index_stats(existing.name).num_unindexed_rows > 0
    if merged or behind:
        table.optimize()
    trained = int(meta.get("index_trained_rows", "0") or 0)
    if existing is not None and rows <= REBUILD_GROWTH * trained:
        action = "updated" if merged or behind else "kept"
        params = json.loads(meta.get("index", "{}"))
    elif existing is not None or rows >= threshold:
        action = "rebuilt" if existing is not None else "built"
        params = index_params(rows, metric)
        config = HnswSq(
            distance_type=metric,
            num_partitions=params["num_partitions"],
            m=HNSW_M,
            ef_construction=HNSW_EF_CONSTRUCTION,
        )
        table.create_index(VECTOR, config=config, replace=True)
        set_meta(table, {"index": json.dumps(params), "index_trained_rows": rows})
    else:
        return {"kind": "none", "action": "none", "threshold": threshold, "search": "exact"}
    stats = table.index_stats(vector_index(table).name)
    return {
        **params,
        "action": action,
        "threshold": threshold,
        "indexed_rows": stats.num_indexed_rows,
        "unindexed_rows": stats.num_unindexed_rows,
    }
