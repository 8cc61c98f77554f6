"""The embed job: each stage called directly on a small pa.Table (no Ray), then the whole job on
a local Ray cluster over a catalog with every kind of dirt, checked row by row."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.embed import EmbedConfig, run
from fashion_batch.embed.actors import actor_settings
from fashion_batch.embed.encode import Embed, EmbedUnits
from fashion_batch.embed.stages import (
    PATH,
    RAW,
    REASON,
    ROW,
    TEXT,
    PrepareText,
    pack,
    packed_table,
    unpack,
)
from fashion_batch.embed.write import WriteUnits
from fashion_batch.io.fs import filesystem
from fashion_batch.text import Template
from tests.helpers import DIRTY_ROWS

TEMPLATE = "{title}. {description}"


def _prepared(rows, duplicate_rows=None, path="f.parquet"):
    table = pa.table(
        {
            "listing_id": pa.array([r[0] for r in rows], pa.int64()),
            "title": [r[1] for r in rows],
            "description": [r[2] for r in rows],
            ROW: pa.array(range(len(rows)), pa.int64()),
            PATH: [path] * len(rows),
        }
    )
    return PrepareText(TEMPLATE, "listing_id", duplicate_rows)(table)


def test_prepare_text_marks_each_kind_of_bad_row():
    out = _prepared(DIRTY_ROWS, {"f.parquet": np.array([6])})
    assert out.column(REASON).to_pylist() == [r[3] for r in DIRTY_ROWS]
    texts = out.column(TEXT).to_pylist()
    assert texts[1] == "Vintage Levi's 501. Soft denim & rivets"
    assert texts[2] == "Pink flower top w/ cowl neckline 💕. Such a cute top for summer!"
    assert texts[7] == "Hollister strappy sports bra, size small"
    raw = out.column(RAW).to_pylist()
    assert raw[0] is None  # raw text is only carried for quarantined rows
    assert raw[3] == "Orphan jacket. no id on this one"


@pytest.fixture(scope="module")
def embed_stage():
    return Embed.load("builtin:minilm", batch_size=4, threads=1)


def test_units_travel_whole_and_come_back_identical(embed_stage):
    """The unit-level actor class gives the same rows as the row-level one, for each unit."""
    a, b = _prepared(DIRTY_ROWS[:4]), _prepared(DIRTY_ROWS[4:])
    packed = packed_table([pack(7, a), pack(9, b)])
    assert unpack(packed)[1] == (9, b)
    units = EmbedUnits(embed=embed_stage)  # share the loaded model: no second load
    out = unpack(units(packed))
    assert [u for u, _ in out] == [7, 9]
    assert out[0][1].equals(embed_stage(a)) and out[1][1].equals(embed_stage(b))


def test_embed_stage_called_directly_on_a_table(embed_stage, minilm):
    prepared = _prepared(DIRTY_ROWS[:5])
    out = embed_stage(prepared)
    assert TEXT not in out.column_names
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    emb = out.column("embedding")
    assert emb.is_null().to_pylist() == [False, False, False, True, True]
    got = np.stack([np.asarray(v, dtype=np.float32) for v in emb.to_pylist()[:3]])
    want = minilm.encode(prepared.column(TEXT).to_pylist()[:3])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_write_units_splits_output_and_quarantine(embed_stage, tmp_path):
    batch = packed_table([pack(0, embed_stage(_prepared(DIRTY_ROWS[:5])))])
    fs, out = filesystem(str(tmp_path))
    stats = WriteUnits(fs, out, "listing_id", {0: 5}, {"model": "m"})(batch).to_pylist()
    assert stats[0]["rows_out"] == 3 and stats[0]["rows_quarantined"] == 2
    part = pq.read_table(tmp_path / "_staging" / "unit-00000.parquet")
    assert part.column_names == ["listing_id", "embedding"]
    assert part.schema.metadata[b"dim"] == b"384"
    q = pq.read_table(tmp_path / "_staging" / "quarantine" / "unit-00000.parquet")
    assert q.column("reason").to_pylist() == ["missing_id", "empty_text"]
    with pytest.raises(RuntimeError, match="planned 6"):
        WriteUnits(fs, out, "listing_id", {0: 6}, {})(batch)


# ---------------------------------------------------------------------- the job on Ray


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    """One run over the dirty catalog (two files, tiny parts so units cross row groups)."""
    from tests.helpers import dirty_table

    d = tmp_path_factory.mktemp("dirty")
    table = dirty_table()
    pq.write_table(table.slice(0, 5), d / "part-0.parquet", row_group_size=3)
    pq.write_table(table.slice(5), d / "part-1.parquet")
    out = tmp_path_factory.mktemp("out") / "embeddings"
    config = EmbedConfig(input=str(d), output=str(out), rows_per_unit=2, num_actors=1)
    return run(config), out


def test_every_row_lands_in_exactly_one_place(finished):
    manifest, out = finished
    parts = pq.read_table(sorted(out.glob("part-*.parquet")))
    quarantine = pq.read_table(sorted((out / "quarantine").glob("part-*.parquet")))
    embedded = sorted(parts.column("listing_id").to_pylist())
    assert embedded == sorted(r[0] for r in DIRTY_ROWS if r[3] is None)
    assert len(set(embedded)) == len(embedded)
    assert sorted(quarantine.column("reason").to_pylist()) == sorted(
        r[3] for r in DIRTY_ROWS if r[3]
    )
    # The copy of 102 that came later is the one quarantined, with its own raw text.
    dup = quarantine.filter(pa.compute.equal(quarantine.column("reason"), "duplicate_id"))
    assert dup.column("text").to_pylist() == ["Vintage Levi's 501 (again). a later copy of 102"]
    assert manifest["rows_in"] == len(DIRTY_ROWS)
    assert manifest["rows_out"] + manifest["rows_quarantined"] == manifest["rows_in"]
    assert manifest["quarantine_reasons"] == {
        "missing_id": 1,
        "invalid_id": 0,  # issue 14: NaN/inf float ids; these ids are int64
        "empty_text": 2,
        "duplicate_id": 1,
        "invalid_utf8": 0,  # issue 14: text bytes that are not UTF-8; this catalog's are
        "template_error": 0,  # issue 14: a value the format spec cannot format; no spec here
    }


def test_output_schema_is_the_contract(finished):
    manifest, out = finished
    for path in out.glob("part-*.parquet"):
        schema = pq.read_schema(path)
        assert schema.names == ["listing_id", "embedding"]
        assert schema.field("listing_id").type == pa.int64()
        assert schema.field("embedding").type == pa.list_(pa.float32(), 384)
        assert schema.metadata[b"model"] == b"builtin:minilm"
        assert schema.metadata[b"dim"] == b"384"
        assert schema.metadata[b"normalized"] == b"false"
    q = pq.read_schema(next((out / "quarantine").glob("part-*.parquet")))
    assert q.names == ["listing_id", "reason", "text"]
    assert manifest["dim"] == 384 and manifest["normalized"] is False
    assert len(manifest["model"]["sha256"]) == 64
    assert sorted(manifest["files"]) == sorted(
        str(p.relative_to(out)) for p in out.rglob("part-*.parquet") if "_state" not in p.parts
    )
    for key in ("started_at", "finished_at", "rows_per_s", "software"):
        assert manifest[key]
    assert (out / "manifest.json").exists()


def test_parity_with_sentence_transformers_encode(finished, minilm):
    _, out = finished
    parts = pq.read_table(sorted(out.glob("part-*.parquet"))).to_pylist()
    template = Template(TEMPLATE)
    by_id = {r[0]: {"title": r[1], "description": r[2]} for r in DIRTY_ROWS if r[3] is None}
    texts = [template.render(by_id[p["listing_id"]]) for p in parts]
    want = minilm.encode(texts)
    got = np.array([p["embedding"] for p in parts], dtype=np.float32)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999


def test_finished_output_is_left_alone_and_overwrite_replaces_it(finished):
    manifest, out = finished
    config = EmbedConfig(input=manifest["input"], output=str(out), rows_per_unit=2)
    assert run(config)["finished_at"] == manifest["finished_at"]
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    config.overwrite, config.normalize = True, True
    again = run(config)
    assert again["normalized"] is True and again["rows_out"] == manifest["rows_out"]
    after = pq.read_table(sorted(out.glob("part-*.parquet")))
    norms = np.linalg.norm(np.array(after.column("embedding").to_pylist()), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert before.keys() == {p.name for p in out.glob("part-*.parquet")}


def test_limit_takes_the_first_rows(ray_cluster, dirty_catalog, tmp_path):
    m = run(EmbedConfig(input=str(dirty_catalog), output=str(tmp_path / "o"), limit=3))
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (3, 3, 0)


@pytest.mark.parametrize(
    "flags, want",
    [  # (actors, CPUs reserved per actor, threads) on the 2-CPU test cluster
        ({}, (2, 0.5, 1)),  # default: a single-threaded actor per CPU, one CPU left for tasks
        ({"num_actors": 1}, (1, 1.0, 2)),  # fewer actors: the CPUs shared as threads
        ({"cpus_per_actor": 1.0}, (1, 1.0, 2)),
        ({"threads_per_actor": 3}, (2, 0.5, 3)),
        ({"min_actors": 1, "max_actors": 4}, (4, 0.25, 1)),
    ],
)
def test_cpu_actor_defaults(ray_cluster, flags, want):
    pool = actor_settings(EmbedConfig(input="x", output="y", **flags))
    assert pool.gpus == 0
    assert (pool.strategy().max_size, pool.cpus, pool.threads) == want
    assert pool.max_size * pool.cpus <= 1.0  # one of the two CPUs always free for read/write tasks


# ---------------------------------------------------------------------- bad input, exit 2


def test_missing_column_exits_2_and_writes_nothing(dirty_catalog, tmp_path, capsys):
    out = tmp_path / "never"
    code = main(
        ["embed", "--input", str(dirty_catalog), "--output", str(out)]
        + ["--text-template", "{title} by {brand}"]
    )
    assert code == 2
    assert "missing column 'brand'" in capsys.readouterr().err
    assert not out.exists()


def test_unreadable_input_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.parquet").write_bytes(b"garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "fashion_batch", "embed", "--input", str(tmp_path / "in")]
        + ["--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "x.parquet: not a readable Parquet file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--input", "/no/such/catalog"], "no such file or directory"),
        (["--model", "/no/such/model"], "no such directory"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--min-actors", "2"], "go together"),
        (["--cpus-per-actor", "0"], "--cpus-per-actor must be > 0"),
        (["--text-template", "no fields"], "names no column"),
    ],
)
def test_bad_arguments_exit_2(dirty_catalog, tmp_path, capsys, extra, message):
    argv = ["embed", "--input", str(dirty_catalog), "--output", str(tmp_path / "never"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
