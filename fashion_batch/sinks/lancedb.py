"""The LanceDB sink: one table (id, embedding, passthrough columns) kept equal to the latest
finished embed output, merged by id, with an ANN index once it is big enough (docs/sinks.md).
This module is the table as readers see it: connecting (local or s3://), its metadata, the index
parameters, and `nearest` (what `fashion-batch search` runs); sinks/lancedb_sync.py loads it.

What the table is, and what made it, lives in the embedding column's field metadata
(`fashion_batch:*`: model, digest, normalized, metric, id column, the snapshot it holds, the
search parameters of its index), so `fashion-batch search` and any other reader can use the table
without the output it came from.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from fashion_batch.errors import InputError
from fashion_batch.sinks import SinkTarget, import_lancedb

VECTOR = "embedding"
META = "fashion_batch:"  # prefix of our keys in the embedding field's metadata
# sentence-transformers' similarity function → LanceDB distance type (same ranking)
METRICS = {"cosine": "cosine", "dot": "dot", "euclidean": "l2"}

# The ANN index (docs/sinks.md, "Index"): HNSW graphs over 8-bit scalar-quantized vectors, one
# graph per IVF partition. Measured on 384-d vectors (2 CPUs): recall@10 0.97-1.0 with the search
# parameters below, where IVF_PQ with 24-48 sub-vectors reached 0.3-0.9 and took longer to build.
INDEX_KIND = "IVF_HNSW_SQ"
ROWS_PER_PARTITION = 50_000  # smaller graphs build faster; nprobes covers more of them
HNSW_M = 20  # neighbours per node (LanceDB's default)
HNSW_EF_CONSTRUCTION = 300  # build-time candidate list (LanceDB's default; 150-300 is usual)
SEARCH_EF = 128  # query-time candidate list per partition
SEARCH_REFINE_FACTOR = 5  # re-rank 5·k candidates on the full-precision vectors
MIN_NPROBES = 20  # partitions searched (at least; 5% of them on very large tables)
REBUILD_GROWTH = 2.0  # retrain the index once the table has this many times its trained rows


def metric_for(similarity_fn_name: str | None) -> str:
    """The LanceDB distance type that ranks like the model's own similarity function."""
    name = similarity_fn_name or "cosine"
    if name not in METRICS:
        raise InputError(
            f"the model's similarity function is {name!r}; LanceDB ranks by "
            f"{', '.join(METRICS)} only"
        )
    return METRICS[name]


def scores(metric: str, distances: np.ndarray) -> np.ndarray:
    """LanceDB `_distance` → the model's similarity score (what `search` prints for Parquet):
    cosine and dot distances are 1 - similarity, l2 is the squared euclidean distance."""
    if metric == "l2":
        return -np.sqrt(np.maximum(distances, 0.0))
    return 1.0 - distances


def storage_options(target: SinkTarget) -> dict[str, str] | None:
    """For s3://: the endpoint (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL: MinIO, moto, R2)
    and region (AWS_REGION / AWS_DEFAULT_REGION) from the same environment the rest of the job
    reads; credentials LanceDB's object store takes from AWS_* itself (or the instance profile).
    """
    if not target.s3:
        return None
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["aws_region"] = region
    return options or None


def connect(target: SinkTarget):
    return import_lancedb().connect(target.location, storage_options=storage_options(target))


def open_table(db, name: str):
    """The table, or None if the database has none of that name."""
    try:
        return db.open_table(name)
    except (ValueError, FileNotFoundError) as e:  # LanceDB: "Table 'x' was not found"
        if "not found" in str(e).lower() or isinstance(e, FileNotFoundError):
            return None
        raise


def table_meta(table) -> dict[str, str]:
    """Our `fashion_batch:*` keys from the embedding field's metadata, without the prefix;
    {} for a table fashion-batch did not write."""
    schema = table.schema
    if VECTOR not in schema.names:
        return {}
    raw = schema.field(VECTOR).metadata or {}
    out = {k.decode(): v.decode() for k, v in raw.items()}
    return {k[len(META) :]: v for k, v in out.items() if k.startswith(META)}


def check_ours(table, name: str) -> dict[str, str]:
    """The table's metadata; an InputError for a table fashion-batch did not write (never
    merged into, never replaced)."""
    meta = table_meta(table)
    if not meta.get("model_sha256"):
        raise InputError(
            f"table {name!r} was not written by fashion-batch (no {VECTOR!r} column with "
            "fashion_batch:* metadata); use another --sink-table"
        )
    return meta


def set_meta(table, values: dict[str, str]) -> None:
    """Set `fashion_batch:*` keys on the embedding field (merged into what is there)."""
    table.update_field_metadata(
        {"path": VECTOR, "metadata": {META + k: str(v) for k, v in values.items()}}
    )


# ------------------------------------------------------------------------------ index


def index_params(rows: int, metric: str) -> dict:
    """The IVF_HNSW_SQ build parameters for a table of `rows` rows, and the search parameters
    that go with them (recorded in the table and the manifest)."""
    partitions = max(1, math.ceil(rows / ROWS_PER_PARTITION))
    return {
        "kind": INDEX_KIND,
        "distance_type": metric,
        "num_partitions": partitions,
        "m": HNSW_M,
        "ef_construction": HNSW_EF_CONSTRUCTION,
        "trained_rows": rows,
        "search": {
            "nprobes": max(MIN_NPROBES, math.ceil(partitions * 0.05)),
            "ef": SEARCH_EF,
            "refine_factor": SEARCH_REFINE_FACTOR,
        },
    }


def vector_index(table):
    """The table's index on the embedding column, or None."""
    for index in table.list_indices():
        if list(index.columns) == [VECTOR]:
            return index
    return None


# ------------------------------------------------------------------------------ search


def nearest(table, query: np.ndarray, k: int) -> list[tuple[object, float]]:
    """The k nearest rows to `query` (1, D) as [(id, score)] best first, ranked by the table's
    metric, with its index's recorded search parameters when it has one (exact otherwise)."""
    meta = table_meta(table)
    metric, id_column = meta["metric"], meta["id_column"]
    q = table.search(query[0].astype(np.float32), vector_column_name=VECTOR)
    q = q.distance_type(metric).limit(k)
    if vector_index(table) is not None:
        search = json.loads(meta.get("index", "{}")).get("search", {})
        q = q.nprobes(search.get("nprobes", MIN_NPROBES)).ef(search.get("ef", SEARCH_EF))
        q = q.refine_factor(search.get("refine_factor", SEARCH_REFINE_FACTOR))
    hits = q.select([id_column, "_distance"]).to_arrow()
    distances = hits.column("_distance").to_numpy(zero_copy_only=False).astype(np.float64)
    ids = hits.column(id_column).to_pylist()
    return list(zip(ids, scores(metric, distances).tolist(), strict=True))
