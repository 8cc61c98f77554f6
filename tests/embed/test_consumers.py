"""The output as the data stack reads it, with no cast of ours on the embedding column: DuckDB
(through Arrow: `FLOAT[768]` and the `array_*` functions; straight from Parquet: `FLOAT[]` and
the `list_*` functions) and Polars (`Array(Float32, 768)`). Each cosine top-k must equal numpy's.

The output comes from a real embed run of the seed architecture (768-d head) on the tiny
DistilBERT, so the dimension is the production one.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.embed import EmbedConfig, run

K = 5
QUERY_ID = 1007

# The README's DuckDB query and docs/usage.md's Arrow one, verbatim but for the output path
# (`{out}`) and the query listing (this catalog's 1007; the docs use one from `make run`).
SQL_ARROW = """
SELECT e.listing_id, array_cosine_similarity(e.embedding, q.embedding) AS score
FROM emb e, (SELECT embedding FROM emb WHERE listing_id = 1007) q
ORDER BY score DESC LIMIT 5
"""
SQL_PARQUET = """
SELECT e.listing_id, list_cosine_similarity(e.embedding, q.embedding) AS score
FROM '{out}/part-*.parquet' e,
     (SELECT embedding FROM '{out}/part-*.parquet' WHERE listing_id = 1007) q
ORDER BY score DESC LIMIT 5
"""


@pytest.fixture(scope="module")
def output(tmp_path_factory, ray_cluster, tiny_distilbert_dir):
    from fashion_batch.encoders.models import build_seed_model

    d = tmp_path_factory.mktemp("consumers")
    model_dir = d / "seed-model"
    build_seed_model(tiny_distilbert_dir).save(str(model_dir))  # Dense(32 → 768)
    n = 40  # listing 1005 has neither title nor description: quarantined as empty_text
    titles = [f"listing {i}: {['red', 'blue', 'black'][i % 3]} dress" for i in range(n)]
    catalog = pa.table(
        {
            "listing_id": pa.array([1000 + i for i in range(n)], pa.int64()),
            "title": [None if i == 5 else t for i, t in enumerate(titles)],
            "description": [None if i == 5 else f"size {i % 5}, worn {i} times" for i in range(n)],
        }
    )
    (d / "catalog").mkdir()
    pq.write_table(catalog, d / "catalog" / "listings.parquet")
    out = d / "embeddings"
    manifest = run(
        EmbedConfig(
            input=str(d / "catalog"), output=str(out), model=str(model_dir), rows_per_unit=16
        )
    )
    assert manifest["dim"] == 768 and manifest["rows_quarantined"] == 1
    assert (out / "quarantine").is_dir()  # the part-* globs below must not pick it up
    return out


@pytest.fixture(scope="module")
def truth(output) -> tuple[list[int], list[float]]:
    """numpy cosine top-k of listing QUERY_ID against every embedded listing."""
    table = pa.concat_tables(pq.read_table(p) for p in sorted(output.glob("part-*.parquet")))
    ids = table.column("listing_id").to_pylist()
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(ids), 768)
    emb = emb.astype(np.float64)
    q = emb[ids.index(QUERY_ID)]
    cos = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))
    order = np.argsort(-cos, kind="stable")[:K]
    assert np.all(np.diff(cos[order]) < -1e-7), "ties would make the order ambiguous"
    return [ids[i] for i in order], cos[order].tolist()


def test_duckdb_through_arrow_sees_float_768(output, truth):
    import glob

    import pyarrow.dataset as ds

    emb = ds.dataset(sorted(glob.glob(f"{output}/part-*.parquet")), format="parquet")
    con = duckdb.connect()
    con.register("emb", emb.to_table())
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE emb)").fetchall())
    assert types == {"listing_id": "BIGINT", "embedding": "FLOAT[768]"}
    rows = con.execute(SQL_ARROW).fetchall()
    assert [r[0] for r in rows] == truth[0]
    np.testing.assert_allclose([r[1] for r in rows], truth[1], rtol=1e-5, atol=1e-6)


def test_duckdb_read_parquet_gives_a_list_and_list_cosine_works(output, truth):
    """DuckDB 2.0's Parquet reader maps fixed_size_list to FLOAT[] (a variable list), so
    `FLOAT[768]` and the array_* functions are out of reach here without a cast; the list_*
    functions give the same answer."""
    con = duckdb.connect()
    describe = f"DESCRIBE SELECT embedding FROM '{output}/part-*.parquet'"
    assert con.execute(describe).fetchone()[1] == "FLOAT[]"
    rows = con.execute(SQL_PARQUET.format(out=output)).fetchall()
    assert [r[0] for r in rows] == truth[0]
    np.testing.assert_allclose([r[1] for r in rows], truth[1], rtol=1e-5, atol=1e-6)


def test_polars_reads_array_float32_768(output, truth):
    df = pl.read_parquet(f"{output}/part-*.parquet")
    assert df.schema == pl.Schema({"listing_id": pl.Int64, "embedding": pl.Array(pl.Float32, 768)})
    emb = df["embedding"].to_numpy()  # (n, 768) float32, no copy through Python lists
    assert emb.shape == (39, 768) and emb.dtype == np.float32
    q = df.filter(pl.col("listing_id") == QUERY_ID)["embedding"].to_numpy()[0]
    cos = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))
    top = np.argsort(-cos, kind="stable")[:K]
    assert df["listing_id"].to_numpy()[top].tolist() == truth[0]
    np.testing.assert_allclose(cos[top], truth[1], rtol=1e-5, atol=1e-6)
