"""Rows an incremental night embeds again on purpose, so that its checks see tonight's actors.

On a `--previous` night most stored vectors are copies of last night's (incremental.py): neither
the quality gate's parity check nor the drift report learns anything about tonight's backend
from them. A small fixed sample of last night's listings is therefore embedded again by the
actors instead of carried when its text is unchanged (delta `rechecked`, counted as unchanged),
and both read those fresh vectors:

* drift (drift.py): cos(last night's stored vector, tonight's) for the same text, which is 1.0
  up to float noise unless the model files or the runtime moved;
* parity (gate.py): cos(tonight's vector, the reference model's vector of the same text,
  reference.py). Every run that passes the gate keeps the references its parity check compared
  in `report/parity-reference.parquet` (id, content hash, vector; the model's digest and the
  reference's kind in the file's metadata). The same text under the same model files has the
  same reference, so a chain of nightly runs loads the reference model only when too few of the
  references are left (their listings edited or removed): the gate then samples afresh and the
  file starts over.

The sample is the previous output's reference rows when it has enough of them, else (an output
made with `--parity-rows 0`, or by an older build) its rows with the smallest content hashes
(`size`): the same rows night after night, in any catalog order.
"""

from __future__ import annotations

import logging
import math
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed import reference
from fashion_batch.embed.layout import REPORT_DIR, embedding_files
from fashion_batch.embed.state import read_hashes
from fashion_batch.io.atomic import write_atomic

log = logging.getLogger(__name__)

REFERENCES = posixpath.join(REPORT_DIR, "parity-reference.parquet")  # under OUTPUT
QUERY_REFERENCES = posixpath.join(REPORT_DIR, "probe-reference.parquet")  # the probe's queries
MODEL_KEY = b"model_sha256"
KIND_KEY = b"reference"  # reference.TORCH or reference.EXPORT; absent (older builds): torch
ENOUGH = 0.75  # share of the wanted parity rows that cached references must still cover
SAMPLE_MIN, SAMPLE_MAX = 64, 256  # a default sample: 1% of the rows, within these bounds


def sample_size(rows: int) -> int:
    """One in 100 of `rows`, at least 64 and at most 256: the default size of a sample checked
    against a reference (the gate's parity sample, the drift report's same-text cosine)."""
    return min(SAMPLE_MAX, max(SAMPLE_MIN, rows // 100))


def read_references(previous, config, name: str = REFERENCES) -> pa.Table | None:
    """The previous output's parity references (id, content_hash, reference), or its probe
    query references (query, reference) with `name=QUERY_REFERENCES`; None when it kept none,
    kept them for other model files (a different digest), or of a kind that cannot stand for
    this run's (reference.accepts)."""
    path = posixpath.join(previous.path, name)
    try:
        with previous.fs.open_input_file(path) as f:
            table = pq.read_table(f)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException) as e:
        log.warning("--previous %s: %s unreadable (%s); the gate re-samples", previous.uri, path, e)
        return None
    digest = (table.schema.metadata or {}).get(MODEL_KEY, b"").decode()
    if digest != previous.manifest["model"]["sha256"]:
        return None
    return table if reference.accepts(kind(table), config) else None


def kind(table: pa.Table | None) -> str:
    """The kind of reference a kept table holds (reference.TORCH or reference.EXPORT)."""
    metadata = (table.schema.metadata or {}) if table is not None else {}
    return metadata.get(KIND_KEY, reference.TORCH.encode()).decode()


def size(rows: int) -> int:
    """How many of last night's `rows` to embed again when no references choose them: the
    parity sample's default size, but never more than a tenth of the rows, so that a small
    catalog's night stays incremental."""
    return min(sample_size(rows), max(1, rows // 10))


def choose(previous, references: pa.Table | None) -> pa.Table:
    """(id, content_hash) of the rows to embed again tonight: the references' rows when there
    are enough of them, else the rows of `previous` with the smallest content hashes (ties by
    id), `size` of them."""
    n = size(previous.manifest["rows_out"])
    if enough(references, n):
        return references.select(["id", "content_hash"])
    index = previous.index.select(["id", "content_hash"])
    return index.sort_by([("content_hash", "ascending"), ("id", "ascending")]).slice(0, n)


def enough(references: pa.Table | None, wanted: int) -> bool:
    """Whether `references` (or the part of them still valid) can stand for a parity sample of
    `wanted` rows."""
    return references is not None and len(references) >= math.ceil(ENOUGH * wanted)


def covered(rechecked: pa.Table | None, references: pa.Table | None, wanted: int):
    """The rechecked rows whose reference vector is kept (id, content_hash, embedding,
    reference), when they are enough for a parity sample of `wanted` rows; else None."""
    if not wanted or rechecked is None or references is None or not len(rechecked):
        return None
    rows = join(rechecked, references, ["id", "content_hash"])
    return rows if enough(rows, wanted) else None


def fresh_vectors(
    fs: pafs.FileSystem, output: str, stats: list[dict], chosen: pa.Table
) -> pa.Table:
    """(id, content_hash, embedding) of the chosen rows tonight's actors embedded again: rows of
    the staged units in `stats` whose id and content hash are both in `chosen`."""
    tables = []
    for s in stats:
        if not s.get("d_rechecked"):
            continue
        name = embedding_files(s["files"])[0]
        hashes = read_hashes(fs, output, name)
        with fs.open_input_file(posixpath.join(output, name)) as f:
            vectors = pq.read_table(f, columns=["embedding"]).column(0)
        t = hashes.append_column("embedding", vectors)
        keep = pc.is_in(t.column("id"), value_set=chosen.column("id").combine_chunks())
        tables.append(t.filter(keep))
    if not tables:
        return _empty(chosen)
    return join(pa.concat_tables(tables), chosen, ["id", "content_hash"])


def join(left: pa.Table, right: pa.Table, keys: list[str]) -> pa.Table:
    """Inner join on `keys` that keeps every column of both tables (right's non-key names must
    differ from left's). Arrow's join cannot carry vector (fixed_size_list) columns, so only
    the keys and row numbers go through it and the rows are taken by position."""
    left_keys = left.select(keys).append_column("__left", pa.array(np.arange(len(left))))
    right_keys = right.select(keys).append_column("__right", pa.array(np.arange(len(right))))
    matched = left_keys.join(right_keys, keys=keys, join_type="inner")
    out = left.take(matched["__left"])
    rest = right.drop_columns(keys).take(matched["__right"])
    for name, column in zip(rest.column_names, rest.columns, strict=True):
        out = out.append_column(name, column)
    return out


def _empty(chosen: pa.Table) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([], chosen.schema.field("id").type),
            "content_hash": pa.array([], pa.string()),
            "embedding": pa.array([], pa.list_(pa.float32(), 1)),
        }
    )


def write_references(
    fs: pafs.FileSystem,
    output: str,
    keys: dict[str, pa.Array],
    vectors: np.ndarray,
    model_sha256: str,
    kind: str,
    name: str = REFERENCES,
) -> str:
    """Keep this run's references for the next night; return the path under OUTPUT. `keys`:
    {"id": ..., "content_hash": ...} (parity) or {"query": ...} (probe, with QUERY_REFERENCES);
    `vectors`: (n, D) reference vectors of `kind`, row i for the keys' row i."""
    flat = pa.array(vectors.astype(np.float32, copy=False).reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    table = pa.table({**keys, "reference": column})
    metadata = {MODEL_KEY: model_sha256.encode(), KIND_KEY: kind.encode()}
    table = table.replace_schema_metadata(metadata)
    write_atomic(fs, table, posixpath.join(output, name))
    return name


def keep(
    fs: pafs.FileSystem,
    output: str,
    model_sha256: str,
    parity: tuple | None,
    queries: list[str],
    query_vectors: np.ndarray | None,
    kinds: tuple[str | None, str | None],
) -> dict:
    """Write the references a passing gate checked against, for the next night; return their
    paths under OUTPUT as the gate report's `references` / `query_references`. `parity`: (ids,
    content hashes, (n, D) vectors) or None; `queries`: the probe's texts, row i of
    `query_vectors` for queries[i]; `kinds`: the parity and the query vectors' reference kinds."""
    out = {}
    if parity is not None and len(parity[0]):
        keys = {"id": parity[0], "content_hash": parity[1]}
        out["references"] = write_references(fs, output, keys, parity[2], model_sha256, kinds[0])
    if queries:
        keys = {"query": pa.array(queries, pa.string())}
        vectors = np.asarray(query_vectors)
        out["query_references"] = write_references(
            fs, output, keys, vectors, model_sha256, kinds[1], QUERY_REFERENCES
        )
    return out


def query_vectors(references: pa.Table | None, texts: list[str]) -> np.ndarray | None:
    """(n, D) kept reference vectors of the probe's query texts, or None unless every one is
    kept."""
    if references is None or not texts:
        return None
    row = {q: i for i, q in enumerate(references.column("query").to_pylist())}
    if not all(t in row for t in texts):
        return None
    return as_matrix(references.column("reference").take([row[t] for t in texts]))


def as_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed_size_list<float32> column as an (n, D) float32 array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = array.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(array), array.type.list_size).astype(np.float32, copy=False)
