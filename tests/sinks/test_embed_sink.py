"""`embed --sink lancedb://PATH` end to end on the shared local Ray cluster (real MiniLM): the table
equals the Parquet output (ids with their int64 type, vectors bit for bit, passthrough columns as
the job kept each id), its exact top-5 equals numpy's, `search` reads it, an incremental run
merges into it by id, a rerun is a no-op, a sink failure leaves a complete output that the same
command then loads, and a bad sink is exit 2 before anything is written."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.sinks import parse_sink
from fashion_batch.sinks.lancedb import connect, nearest

BIG = 2**60
KINDS = ["leather handbag", "wool coat", "denim jacket", "silk scarf", "running shoes", "sandals"]
COLORS = ["red", "black", "navy", "beige", "green", "white", "brown"]


def _listing(i: int) -> dict:
    return {
        "listing_id": BIG + i,
        "title": f"{COLORS[i % 7]} {KINDS[i % 6]} no. {i}",
        "description": f"Pre-loved, size {i % 9}, ships in {i % 4 + 1} days",
        "price": float(10 + i),
        "brand": f"brand-{i % 5}",
    }


V1 = [_listing(i) for i in range(60)]


def _v2() -> list[dict]:
    """V1 a day later: 0-4 delisted, 5-8 retitled, 9-10 repriced only, 100-105 new."""
    rows = {r["listing_id"]: dict(r) for r in V1[5:]}
    for i in range(5, 9):
        rows[BIG + i]["title"] += " (reduced!)"
    for i in (9, 10):
        rows[BIG + i]["price"] = 1.0
    new = [_listing(i) for i in range(100, 106)]
    return [*new, *rows.values()]


def _write_catalog(d: Path, rows: list[dict], extra: list[dict] = ()) -> Path:
    d.mkdir(parents=True)
    schema = pa.schema(
        [
            ("listing_id", pa.int64()),
            ("title", pa.string()),
            ("description", pa.string()),
            ("price", pa.float64()),
            ("brand", pa.string()),
        ]
    )
    half = len(rows) // 2
    pq.write_table(pa.Table.from_pylist(rows[:half], schema), d / "a.parquet")
    pq.write_table(pa.Table.from_pylist([*rows[half:], *extra], schema), d / "b.parquet")
    return d


# a later copy of listing 3 (quarantined as duplicate_id: the table keeps the first's price) and
# a row with no text (quarantined: not in the table)
DIRT = [
    {**V1[3], "title": "later copy", "price": 999.0},
    {"listing_id": BIG + 77, "title": " ", "description": None, "price": 5.0, "brand": "x"},
]


def _embed(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["embed", *argv])
    return rc, out.getvalue(), err.getvalue()


def _parts(out: Path) -> pa.Table:
    return pq.read_table(sorted(out.glob("part-*.parquet")))


def _table(db: Path, name: str = "listings") -> pa.Table:
    return connect(parse_sink(f"lancedb://{db}")).open_table(name).to_arrow()


def _by_id(table: pa.Table, column: str) -> dict:
    return dict(zip(table["listing_id"].to_pylist(), table[column].to_pylist(), strict=True))


@pytest.fixture(scope="module")
def shop(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("sink")
    _write_catalog(root / "v1", V1, DIRT)
    _write_catalog(root / "v2", _v2())
    common = ["--sink", f"lancedb://{root / 'db'}", "--sink-columns", "price,brand"]
    common += ["--num-actors", "1", "--batch-size", "16"]
    first = ["--input", str(root / "v1"), "--output", str(root / "out1"), *common]
    run1 = (*_embed(*first), _table(root / "db"))  # the table as the first run left it
    second = ["--input", str(root / "v2"), "--output", str(root / "out2"), *common]
    second += ["--previous", str(root / "out1")]
    run2 = _embed(*second)
    return root, (first, run1), (second, run2)


def test_embed_with_sink_loads_the_output_after_the_manifest(shop):
    root, (_, (rc, out, err, table)), _ = shop
    assert rc == 0, err
    manifest = json.loads((root / "out1" / "manifest.json").read_text())
    sink = manifest["sink"]
    assert sink["uri"] == f"lancedb://{root / 'db'}" and sink["table"] == "listings"
    assert (sink["action"], sink["rows"], sink["inserted"]) == ("create", 60, 60)
    assert sink["columns"] == ["listing_id", "embedding", "price", "brand"]
    assert sink["index"] == {
        "kind": "none",
        "action": "none",
        "threshold": 100_000,
        "search": "exact",
    }
    assert "sink         lancedb://" in out

    parts = _parts(root / "out1")
    assert table.schema.field("listing_id").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    want, got = _by_id(parts, "embedding"), _by_id(table, "embedding")
    assert set(got) == set(want) == {r["listing_id"] for r in V1}  # no quarantined id
    for i, vector in want.items():
        assert got[i] == vector  # bit for bit
    prices = _by_id(table, "price")
    assert prices[BIG + 3] == V1[3]["price"]  # the first occurrence, as the job kept it
    assert _by_id(table, "brand")[BIG + 12] == "brand-2"


def test_lancedb_top5_equals_exact_numpy_top5(shop, minilm):
    """20 queries, exact search (the table is below the index threshold; it holds out2)."""
    root = shop[0]
    parts = _parts(root / "out2")
    ids = parts["listing_id"].to_pylist()
    vectors = np.array(parts["embedding"].to_pylist(), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = [f"{c} {k}" for c in COLORS[:4] for k in KINDS[:5]]
    assert len(queries) == 20
    q = minilm.encode(queries, convert_to_numpy=True)
    table = connect(parse_sink(f"lancedb://{root / 'db'}")).open_table("listings")
    for query in q:
        scores = vectors @ (query / np.linalg.norm(query))
        want = np.argsort(-scores, kind="stable")[:5]
        hits = nearest(table, query[None, :], 5)
        np.testing.assert_allclose([h[1] for h in hits], scores[want], atol=1e-5)
        got, exact = [h[0] for h in hits], [ids[i] for i in want]
        if got != exact:  # only listings tied within float32 noise may trade places
            by_id = dict(zip(ids, scores, strict=True))
            np.testing.assert_allclose([by_id[i] for i in got], scores[want], atol=1e-6)


def _hits(lines: list[str]) -> list[tuple[int, float, str]]:
    """(id, score, text) of `search`'s printed rows."""
    rows = [line.split(None, 3) for line in lines[1:]]
    return [(int(r[2]), float(r[1]), r[3]) for r in rows]


def test_search_reads_the_lancedb_table(shop, capsys):
    """Same hits, scores and texts as `search` over the Parquet output the table holds (out2)."""
    root = shop[0]
    args = ["--catalog", str(root / "v2"), "--model", "builtin:minilm", "red wool coat", "-k", "5"]
    assert main(["search", "--embeddings", f"lancedb://{root / 'db'}", *args]) == 0
    lance = _hits(capsys.readouterr().out.splitlines())
    assert main(["search", "--embeddings", str(root / "out2"), *args]) == 0
    parquet = _hits(capsys.readouterr().out.splitlines())
    assert len(lance) == 5
    assert [(i, t) for i, _, t in lance] == [(i, t) for i, _, t in parquet]
    np.testing.assert_allclose([s for _, s, _ in lance], [s for _, s, _ in parquet], atol=2e-4)
    db = f"lancedb://{root / 'db'}"
    assert main(["search", "--embeddings", db, "--table", "nope", *args]) == 2
    assert "no table 'nope'" in capsys.readouterr().err
    other = ["--catalog", str(root / "v2"), "--model", "missing-model-dir", "coat"]
    assert main(["search", "--embeddings", db, *other]) == 2


def test_incremental_run_merges_into_the_table(shop):
    root, _, (_, (rc, _, err)) = shop
    assert rc == 0, err
    manifest = json.loads((root / "out2" / "manifest.json").read_text())
    assert manifest["incremental"]["new"] == 6 and manifest["incremental"]["changed"] == 4
    sink = manifest["sink"]
    before, after, parts = _vectors_v1(root), _table(root / "db"), _parts(root / "out2")
    got, want = _by_id(after, "embedding"), _by_id(parts, "embedding")
    # the sample a nightly embeds again for its checks (embed/recheck.py) may differ from last
    # night's bytes by float noise: such a row is updated too, so the table holds the snapshot
    retitled = {BIG + i for i in range(5, 9)}
    noise = {i for i in want if i in before and i not in retitled and want[i] != before[i]}
    assert len(noise) <= manifest["incremental"]["rechecked"]
    # merged, not rebuilt: 6 new inserted; 4 retitled + 2 repriced updated; 5 delisted deleted
    assert (sink["action"], sink["inserted"], sink["deleted"]) == ("merge", 6, 5)
    assert 6 <= sink["updated"] <= 6 + len(noise)
    assert sink["rows"] == manifest["rows_out"] == 61
    assert sink["unchanged"] == 61 - 6 - sink["updated"]
    assert got == want
    assert not {BIG + i for i in range(5)} & set(got)  # removed ids gone
    for i in retitled:
        assert got[i] != before[i]  # changed text: new vector
    for i in {BIG + 9, BIG + 10, BIG + 30} - noise:
        assert got[i] == before[i]  # carried over bit for bit
    assert _by_id(after, "price")[BIG + 9] == 1.0


def _vectors_v1(root: Path) -> dict:
    return _by_id(_parts(root / "out1"), "embedding")


def test_rerun_of_a_synced_output_changes_nothing(shop):
    root, _, (second, _) = shop
    manifest = (root / "out2" / "manifest.json").read_text()
    version = connect(parse_sink(f"lancedb://{root / 'db'}")).open_table("listings").version
    rc, _, err = _embed(*second)
    assert rc == 0, err
    assert (root / "out2" / "manifest.json").read_text() == manifest
    assert connect(parse_sink(f"lancedb://{root / 'db'}")).open_table("listings").version == version


def test_the_driver_never_imports_lancedb(shop, monkeypatch):
    """The table check and the sync run in the run's sidecar process (runtime/sidecar.py), so the
    driver, which forks Ray's processes, never has lancedb's after-fork hook installed."""
    root = shop[0]
    from fashion_batch.sinks import lancedb as sink

    def not_in_the_driver():
        raise AssertionError("lancedb imported in the driver")

    (root / "db5").mkdir()  # an existing database: the check opens it
    monkeypatch.setattr(sink, "import_lancedb", not_in_the_driver)
    argv = ["--input", str(root / "v1"), "--output", str(root / "out5")]
    rc, _, err = _embed(*argv, "--sink", f"lancedb://{root / 'db5'}", "--num-actors", "1")
    assert rc == 0, err
    monkeypatch.undo()
    manifest = json.loads((root / "out5" / "manifest.json").read_text())
    assert manifest["sink"]["action"] == "create" and len(_table(root / "db5")) == 60


def test_sink_failure_exits_1_and_the_same_command_retries_it(shop, monkeypatch):
    root = shop[0]
    argv = ["--input", str(root / "v1"), "--output", str(root / "out3")]
    argv += ["--sink", f"lancedb://{root / 'db3'}", "--num-actors", "1"]
    # the sidecar fails the sync as a full disk would (runtime/faults.py)
    monkeypatch.setenv("FASHION_BATCH_FAULT_SINK_ERROR", "No space left on device")
    rc, _, err = _embed(*argv)
    assert rc == 1
    assert "No space left on device" in err and "Parquet output is complete" in err
    assert "re-run the same command" in err
    manifest = json.loads((root / "out3" / "manifest.json").read_text())
    assert "sink" not in manifest

    monkeypatch.delenv("FASHION_BATCH_FAULT_SINK_ERROR")
    rc, out, err = _embed(*argv)  # the finished output returns early and loads the sink
    assert rc == 0, err
    synced = json.loads((root / "out3" / "manifest.json").read_text())
    assert synced["sink"]["action"] == "create" and synced["sink"]["rows"] == 60
    assert {k: v for k, v in synced.items() if k != "sink"} == manifest
    assert len(_table(root / "db3")) == 60


def test_bad_sink_exits_2_before_anything_is_written(shop, monkeypatch):
    root = shop[0]
    base = ["--input", str(root / "v1"), "--num-actors", "1"]
    db = f"lancedb://{root / 'db'}"
    cases = [
        (["--sink", str(root / "db")], "must be lancedb://PATH"),
        (["--sink", "lancedb://s3://"], "needs a bucket"),
        (["--sink", f"lancedb://{root / 'never-2' / 'lance'}"], "overlaps --output"),
        (["--sink", f"lancedb://{root / 'v1'}"], "overlaps --input"),
        (["--sink", db, "--sink-columns", "price,nope"], "no column 'nope'"),
        (["--sink", db, "--sink-columns", "listing_id"], "always in the table"),
        (["--sink-columns", "price"], "--sink-columns needs --sink"),
        (["--sink", db, "--sink-table", "bad name"], "--sink-table"),
        (["--sink", db, "--sink-index-threshold", "0"], "--sink-index-threshold must be > 0"),
    ]
    for i, (extra, words) in enumerate(cases):
        out = root / f"never-{i}"
        rc, _, err = _embed(*base, "--output", str(root / f"never-{i}"), *extra)
        assert rc == 2 and words in err, (extra, err)
        assert "Traceback" not in err
        assert not out.exists()

    # a table of that name that fashion-batch did not write: found once Ray is up, before writing
    db = connect(parse_sink(f"lancedb://{root / 'foreign'}"))
    db.create_table("listings", pa.table({"listing_id": [1], "note": ["theirs"]}))
    out = root / "never-foreign"
    rc, _, err = _embed(*base, "--output", str(out), "--sink", f"lancedb://{root / 'foreign'}")
    assert rc == 2 and "not written by fashion-batch" in err, err
    assert not out.exists()

    # lancedb not installed: exit 2 naming the extra, before planning
    monkeypatch.setitem(sys.modules, "lancedb", None)
    out = root / "never-missing"
    rc, _, err = _embed(*base, "--output", str(out), "--sink", f"lancedb://{root / 'db9'}")
    assert rc == 2 and "pip install 'fashion-batch[lancedb]'" in err, err
    assert not out.exists()
