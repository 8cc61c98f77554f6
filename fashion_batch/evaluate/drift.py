"""Drift between two embed outputs: did the vectors move, and did search results move?

Three measurements, the same for `fashion-batch drift --old A --new B` and for the report an
incremental nightly run writes (embed/drift.py):

* **same-text cosine**: for listings whose cleaned text is the same in both snapshots (same id,
  same content hash, the index `_state/hashes/` keeps), the cosine between an old and a new vector
  of the same text. With the same model and backend it is 1.0 up to float noise; anything lower
  is model or backend drift. Rows are a deterministic sample: those with the smallest content
  hashes (spread over the catalog, independent of file layout and order).
* **neighbour overlap@k** on probe queries (`query` + `relevant_ids` JSONL, as for `evaluate`):
  each query's top-k ids over the old vectors and over the new ones, |A ∩ B| / k, averaged. Each
  snapshot's queries are encoded by that snapshot's own model (the one its manifest names, digest
  checked) and ranked by that model's similarity function: a model change moves both sides, as it
  would for users. This one also moves when listings are added, edited or removed.
* **centroid shift** per category (a catalog column): 1 − cos(old centroid, new centroid) over the
  ids present in both snapshots. Edited listings move it as well as a model change; a rerun with
  the same model over the same catalog leaves it at 0.

The report is drift.json (the numbers) and drift.png (the histogram, overlaps and shifts:
evaluate/drift_plot.py).
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.errors import InputError
from fashion_batch.evaluate.metrics import top_k
from fashion_batch.evaluate.snapshots import Snapshot, similarity, unit
from fashion_batch.io.atomic import write_bytes_atomic, write_json_atomic
from fashion_batch.io.inputs import check_schema, list_input_files

K = 10
# Bins of the same-text cosine: drift lives in the last few nines.
EDGES = [-1.0, 0.9, 0.99, 0.999, 0.9999, 0.99999, 1.0 + 1e-6]


def same_text_rows(old: pa.Table, new: pa.Table, sample: int) -> pa.Table:
    """Rows of ids in both indexes (Snapshot.index) with the same content hash: id, hash, and
    (part, row) in each; the `sample` with the smallest hashes (ties by id)."""
    try:
        joined = new.join(old, keys="id", join_type="inner", left_suffix="", right_suffix="_old")
    except pa.ArrowException as e:
        raise InputError(f"the two outputs' ids cannot be matched ({e})") from e
    same = joined.filter(pc.equal(joined["content_hash"], joined["content_hash_old"]))
    return same.sort_by([("content_hash", "ascending"), ("id", "ascending")]).slice(0, sample)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, D) arrays: (n,) float64."""
    return (unit(a.astype(np.float64)) * unit(b.astype(np.float64))).sum(1)


def cosine_summary(cos: np.ndarray, compared: str) -> dict:
    counts, _ = np.histogram(cos, bins=EDGES)
    return {
        "compared": compared,
        "rows": len(cos),
        "min": float(cos.min()) if len(cos) else None,
        "mean": float(cos.mean()) if len(cos) else None,
        "p01": float(np.quantile(cos, 0.01)) if len(cos) else None,
        "histogram": {"edges": EDGES, "counts": counts.tolist()},
    }


def snapshot_top_ids(snapshot: Snapshot, queries: np.ndarray, sim: str, k: int) -> list[list]:
    """Each query's top-k ids over the snapshot's vectors, best first, one part at a time."""
    best_scores = np.zeros((len(queries), 0))  # (Q, <= k)
    best_ids = np.zeros((len(queries), 0), dtype=object)  # (Q, <= k)
    for ids, vectors in snapshot.iter_parts():
        if not len(ids):
            continue
        scores = np.concatenate([best_scores, similarity(sim, queries, vectors)], axis=1)
        all_ids = np.concatenate(
            [best_ids, np.tile(np.array(ids.to_pylist(), dtype=object), (len(queries), 1))], 1
        )
        keep = top_k(scores, k)  # (Q, k'): ties go to the earlier part and row
        best_scores = np.take_along_axis(scores, keep, 1)
        best_ids = np.take_along_axis(all_ids, keep, 1)
    return best_ids.tolist()


def neighbour_overlap(
    old: Snapshot, new: Snapshot, queries: list[str], encode_old, encode_new, sims: tuple
) -> dict:
    """overlap@K of each query's top-K over `old` and over `new`, each side's queries encoded
    by its own `encode` (texts → (n, D)) and ranked by its similarity function `sims[i]`."""
    top_old = snapshot_top_ids(old, encode_old(queries), sims[0], K)
    top_new = snapshot_top_ids(new, encode_new(queries), sims[1], K)
    per_query = [
        len(set(a) & set(b)) / max(1, min(K, len(a), len(b)))
        for a, b in zip(top_old, top_new, strict=True)
    ]
    return {
        f"overlap@{K}": float(np.mean(per_query)) if per_query else None,
        "queries": [{"query": q, "overlap": o} for q, o in zip(queries, per_query, strict=True)],
    }


def read_categories(uri: str, id_column: str, column: str, flag: str) -> pa.Table:
    """(id, category as text; null → "(none)") of every row of a Parquet catalog."""
    fs, files = list_input_files(uri)
    tables = []
    for path in files:
        with fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
        if column not in schema.names:
            raise InputError(f"{flag} {column!r}: no such column in {path}")
        check_schema(path, schema, [id_column, column])
        with fs.open_input_file(path) as f:
            t = pq.read_table(f, columns=[id_column, column])
        category = pc.fill_null(t.column(column).cast(pa.string()), "(none)")
        tables.append(pa.table({"id": t.column(id_column), "category": category}))
    t = pa.concat_tables(tables)
    first = t.group_by("id", use_threads=False).aggregate([("category", "first")])
    return first.rename_columns(["id", "category"])


def centroid_shift(old: Snapshot, new: Snapshot, shared: pa.Table, categories: pa.Table) -> dict:
    """{category: {"listings", "shift"}} over the ids of `shared` (ids in both snapshots)."""
    tagged = shared.select(["id"]).join(categories, keys="id", join_type="inner")
    names = sorted(set(tagged.column("category").to_pylist()))
    code = pa.array([names.index(c) for c in tagged.column("category").to_pylist()], pa.int32())
    tagged = tagged.drop_columns(["category"]).append_column("code", code)
    sums = [_category_sums(s, tagged, len(names)) for s in (old, new)]  # 2 x (C, D)
    counts = np.bincount(code.to_numpy(), minlength=len(names))  # (C,)
    shift = np.maximum(1.0 - cosines(sums[0], sums[1]), 0.0)  # (C,); float noise can dip below 0
    return {
        n: {"listings": int(c), "shift": float(s)}
        for n, c, s in zip(names, counts, shift, strict=True)
    }


def _category_sums(snapshot: Snapshot, tagged: pa.Table, n: int) -> np.ndarray:
    total = None
    for ids, vectors in snapshot.iter_parts():
        if total is None:
            total = np.zeros((n, vectors.shape[1]))  # (C, D)
        rows = pa.table({"id": ids, "row": pa.array(np.arange(len(ids)))})
        hit = rows.join(tagged, keys="id", join_type="inner")
        np.add.at(total, hit.column("code").to_numpy(), vectors[hit.column("row").to_numpy()])
    return total if total is not None else np.zeros((n, 1))


def shared_ids(old: pa.Table, new: pa.Table) -> pa.Table:
    return new.select(["id"]).join(old.select(["id"]), keys="id", join_type="inner")


def write_report(fs: pafs.FileSystem, directory: str, report: dict, cos: np.ndarray) -> dict:
    """drift.json and drift.png into `directory`; return their paths."""
    from fashion_batch.evaluate.drift_plot import render

    paths = {"json": posixpath.join(directory, "drift.json")}
    paths["png"] = posixpath.join(directory, "drift.png")
    write_json_atomic(fs, report, paths["json"])
    write_bytes_atomic(fs, render(report, cos), paths["png"])
    return paths


def summary(report: dict) -> str:
    """A few lines for the terminal."""
    st = report["same_text"]
    lines = [f"same-text cosine  {st['rows']} rows ({st['compared']})"]
    if st["rows"]:
        lines.append(f"                  min {st['min']:.6f}  mean {st['mean']:.6f}")
    overlap = report.get("neighbours")
    if overlap:
        lines.append(
            f"overlap@{K}        {overlap[f'overlap@{K}']:.3f} over "
            f"{len(overlap['queries'])} probe queries"
        )
    for name, c in (report.get("centroid_shift") or {}).items():
        lines.append(f"centroid shift    {name}: {c['shift']:.6f} ({c['listings']} listings)")
    return "\n".join(lines)


def compare(
    old: Snapshot,
    new: Snapshot,
    indexes: tuple[pa.Table, pa.Table],
    cos: np.ndarray,
    compared: str,
    queries: list[str] | None = None,
    encoders: tuple | None = None,
    sims: tuple = ("cosine", "cosine"),
    categories: pa.Table | None = None,
) -> dict:
    """The drift report of `new` against `old`.

    Args:
        old, new: the snapshots; indexes: their Snapshot.index() tables (old, new).
        cos: the same-text cosines; compared: what exactly they compare (recorded).
        queries: probe query texts, or None; encoders: (old, new) texts → (n, D) functions.
        sims: each side's similarity function name (snapshots.similarity_name).
        categories: (id, category) of the catalog, or None.
    """
    report = {
        "old": old.uri,
        "new": new.uri,
        "models": {
            "old": {k: old.manifest["model"].get(k) for k in ("name", "sha256")},
            "new": {k: new.manifest["model"].get(k) for k in ("name", "sha256")},
        },
        "same_text": cosine_summary(cos, compared),
        "neighbours": None,
        "centroid_shift": None,
    }
    if queries:
        report["neighbours"] = neighbour_overlap(old, new, queries, *encoders, sims)
    if categories is not None:
        shared = shared_ids(*indexes)
        report["centroid_shift"] = centroid_shift(old, new, shared, categories)
    return report
