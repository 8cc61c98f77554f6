"""The LanceDB sink (docs/sinks.md) without Ray: synthetic snapshots synced into a local table.

Exact search below the index threshold gives numpy's top-k; the IVF_HNSW_SQ index above it keeps
recall@10 >= 0.95; merges by id update only the rows whose vector or passthrough values changed,
insert new ids, delete removed ones, and keep the id's exact Arrow type. The embed job with
`--sink` (end to end, incremental, failure and retry) is tests/sinks/test_embed_sink.py.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fashion_batch.errors import InputError
from fashion_batch.sinks import parse_sink
from fashion_batch.sinks.lancedb import connect, nearest, table_meta
from fashion_batch.sinks.lancedb_sync import Snapshot, sync

BIG = 2**60  # int64 ids above 2**53: a float64 detour would merge neighbours


DAY1 = "2026-01-01T00:00:00Z"


def snapshot(ids, vectors, metric="cosine", finished_at=DAY1, **extra) -> Snapshot:
    """A synthetic finished output: ids (int64), float32 vectors, optional passthrough columns."""
    vectors = np.asarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    columns = {
        "listing_id": pa.array(ids, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        **extra,
    }
    fields = [pa.field("listing_id", pa.int64(), nullable=False)]
    fields += [pa.field("embedding", pa.list_(pa.float32(), dim))]
    fields += [pa.field(k, v.type) for k, v in extra.items()]
    schema = pa.schema(fields)
    table = pa.Table.from_pydict(columns, schema=schema)
    meta = {
        "model": "synthetic",
        "model_sha256": "0" * 64,
        "normalized": "false",
        "metric": metric,
        "id_column": "listing_id",
        "text_template": "{title}",
        "source": "/tmp/out",
        "run_digest": finished_at,
        "finished_at": finished_at,
    }
    return Snapshot(schema, lambda: iter(table.to_batches(max_chunksize=97)), len(ids), meta)


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors around 50 centres, like embeddings of a catalog of a few kinds of item."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    return (centres[rng.integers(0, 50, n)] + 0.6 * rng.standard_normal((n, dim))).astype(
        np.float32
    )


def exact(vectors: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """(q, n) similarity scores, numpy in float64: what `nearest` must reproduce."""
    v, q = vectors.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
            v / np.linalg.norm(v, axis=1, keepdims=True)
        ).T
    if metric == "dot":
        return q @ v.T
    return -np.sqrt(((q[:, None, :] - v[None, :, :]) ** 2).sum(-1))


@pytest.fixture
def target(tmp_path):
    return parse_sink(f"lancedb://{tmp_path / 'db'}")


def _open(target, name="listings"):
    return connect(target).open_table(name)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_exact_search_below_threshold_equals_numpy_top5(target, metric):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((400, 32)).astype(np.float32)
    ids = [BIG + 3 * i for i in range(400)]
    record = sync(target, "listings", snapshot(ids, vectors, metric), threshold=1000)
    assert record["index"]["kind"] == "none" and record["rows"] == 400
    table = _open(target)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    scores = exact(vectors, queries, metric)
    for q, s in zip(queries, scores, strict=True):
        hits = nearest(table, q[None, :], 5)
        want = np.argsort(-s, kind="stable")[:5]
        assert [h[0] for h in hits] == [ids[i] for i in want]
        np.testing.assert_allclose([h[1] for h in hits], s[want], rtol=1e-4, atol=1e-4)


def test_index_above_threshold_keeps_recall_at_10(target):
    vectors = clustered(3000, 384)
    ids = list(range(BIG, BIG + 3000))
    record = sync(target, "listings", snapshot(ids, vectors), threshold=2000)
    index = record["index"]
    assert (index["kind"], index["action"], index["indexed_rows"]) == ("IVF_HNSW_SQ", "built", 3000)
    assert index["distance_type"] == "cosine" and index["search"]["refine_factor"] == 5
    table = _open(target)
    queries = clustered(20, 384, seed=7)
    truth = np.argsort(-exact(vectors, queries, "cosine"), axis=1)[:, :10]
    recall = [
        len({h[0] for h in nearest(table, q[None, :], 10)} & {ids[i] for i in t}) / 10
        for q, t in zip(queries, truth, strict=True)
    ]
    assert np.mean(recall) >= 0.95, recall

    # A later sync adds rows to the index (optimize) instead of retraining it...
    more = clustered(500, 384, seed=3)
    ids2 = ids + list(range(BIG + 3000, BIG + 3500))
    v2 = np.concatenate([vectors, more])
    again = sync(target, "listings", snapshot(ids2, v2, finished_at="2026-01-02T00:00:00Z"), 2000)
    assert again["index"]["action"] == "updated" and again["inserted"] == 500
    assert (again["index"]["indexed_rows"], again["index"]["unindexed_rows"]) == (3500, 0)
    # ...until the table has doubled since it was trained.
    ids3 = list(range(BIG, BIG + 6100))
    v3 = clustered(6100, 384, seed=5)
    third = sync(target, "listings", snapshot(ids3, v3, finished_at="2026-01-03T00:00:00Z"), 2000)
    assert third["index"]["action"] == "rebuilt" and third["index"]["trained_rows"] == 6100


def test_merge_by_id_upserts_changed_and_new_deletes_removed(target):
    """Only rows whose vector or passthrough value changed are rewritten; ids keep int64."""
    rng = np.random.default_rng(2)
    ids = [BIG + i for i in range(100)]  # consecutive: distinct in int64, equal in float64
    v1 = rng.standard_normal((100, 8)).astype(np.float32)
    price1 = pa.array([float(i) for i in range(100)])
    first = sync(target, "listings", snapshot(ids, v1, price=price1), threshold=10_000)
    assert (first["action"], first["inserted"], first["rows"]) == ("create", 100, 100)

    keep = ids[10:]  # 0..9 removed
    v2 = {i: v1[k] for k, i in enumerate(ids) if i in keep}
    for i in ids[10:15]:  # 5 changed vectors
        v2[i] = rng.standard_normal(8).astype(np.float32)
    price2 = {i: float(i - BIG) for i in keep}
    price2[ids[20]] = None  # a passthrough value that became null: changed too
    new = [BIG + 1000 + i for i in range(7)]
    for i in new:
        v2[i], price2[i] = rng.standard_normal(8).astype(np.float32), 1.5
    order = new + keep[::-1]  # any order: the merge is by id
    snap = snapshot(
        order,
        [v2[i] for i in order],
        price=pa.array([price2[i] for i in order], pa.float64()),
        finished_at="2026-01-02T00:00:00Z",
    )
    second = sync(target, "listings", snap, threshold=10_000)
    assert (second["action"], second["inserted"], second["updated"], second["deleted"]) == (
        "merge",
        7,
        6,
        10,
    )
    assert second["unchanged"] == 84 and second["rows"] == 97

    table = _open(target).to_arrow()
    assert table.schema.field("listing_id").type == pa.int64()
    got = dict(zip(table["listing_id"].to_pylist(), table["embedding"].to_pylist(), strict=True))
    assert set(got) == set(order)  # removed ids gone, no id merged with a neighbour
    for i in order:
        np.testing.assert_array_equal(np.float32(got[i]), v2[i])
    prices = dict(zip(table["listing_id"].to_pylist(), table["price"].to_pylist(), strict=True))
    assert prices[ids[20]] is None and prices[new[0]] == 1.5

    # The same snapshot again changes nothing.
    third = sync(target, "listings", snap, threshold=10_000)
    assert (third["action"], third["inserted"], third["updated"], third["deleted"]) == (
        "current",
        0,
        0,
        0,
    )


def test_other_model_replaces_the_table_and_older_snapshot_is_refused(target):
    rng = np.random.default_rng(3)
    ids = list(range(50))
    sync(target, "listings", snapshot(ids, rng.standard_normal((50, 8))), threshold=10_000)
    other = snapshot(ids[:40], rng.standard_normal((40, 16)), finished_at="2026-02-01T00:00:00Z")
    other.meta["model_sha256"] = "1" * 64
    record = sync(target, "listings", other, threshold=10_000)
    assert record["action"] == "replace" and "model_sha256" in record["reason"]
    assert (record["inserted"], record["deleted"], record["rows"]) == (40, 50, 40)
    assert table_meta(_open(target))["model_sha256"] == "1" * 64

    older = snapshot(ids, rng.standard_normal((50, 16)), finished_at="2026-01-15T00:00:00Z")
    older.meta["model_sha256"] = "1" * 64
    with pytest.raises(InputError, match="newer snapshot"):
        sync(target, "listings", older, threshold=10_000)


def test_a_table_fashion_batch_did_not_write_is_never_touched(target):
    db = connect(target)
    db.create_table("listings", pa.table({"listing_id": [1, 2], "title": ["a", "b"]}))
    with pytest.raises(InputError, match="not written by fashion-batch"):
        sync(target, "listings", snapshot([1], [[1.0, 0.0]]), threshold=10)
    assert db.open_table("listings").count_rows() == 2


def test_empty_output_gives_an_empty_table(target):
    empty = snapshot([], np.zeros((0, 4), np.float32))
    assert sync(target, "listings", empty, threshold=10)["rows"] == 0
    assert _open(target).count_rows() == 0


@pytest.mark.parametrize(
    "uri, words",
    [
        ("/tmp/db", "must be lancedb://PATH"),
        ("lancedb://", "must be lancedb://PATH"),
        ("lancedb://gs://bucket/x", "local path or s3://"),
        ("lancedb://s3://KEY:SECRET@bucket/x", "no credentials"),
        ("lancedb://s3:///x", "needs a bucket"),
    ],
)
def test_bad_sink_uri_is_an_input_error(uri, words):
    with pytest.raises(InputError, match=words):
        parse_sink(uri)


def test_sink_uri_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_sink("lancedb://rel/db").location == str(tmp_path / "rel" / "db")
    s3 = parse_sink("lancedb://s3://bucket/some/prefix/")
    assert (s3.location, s3.s3, s3.uri) == (
        "s3://bucket/some/prefix",
        True,
        "lancedb://s3://bucket/some/prefix",
    )


def test_sink_uris_print_as_given_and_inner_credentials_are_redacted():
    """The manifest's argv and every message go through io.fs.redact_text."""
    from fashion_batch.io.fs import redact_text

    for uri in ("lancedb:///data/lancedb", "lancedb://rel/db", "lancedb://s3://bucket/x"):
        assert redact_text(f"--sink {uri}: failed") == f"--sink {uri}: failed"
    assert redact_text("lancedb://s3://KEY:SECRET@bucket/x") == "lancedb://s3://***@bucket/x"
