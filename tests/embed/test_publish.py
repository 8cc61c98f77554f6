"""Publishing (embed/publish.py): staged units become parts of about --target-part-mib, one row
group per unit, only after the gate; an --overwrite that is refused or dies while publishing
leaves a consistent output. Small targets make several parts out of a tiny catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.embed import EmbedConfig
from fashion_batch.embed import job as embed_job
from fashion_batch.embed import publish as publishing
from fashion_batch.embed.publish import ID_BYTES, MIB, Part, group_units, units_of
from fashion_batch.io.rows import take_rows

ROWS = 300
UNIT = 16  # --rows-per-unit
DIM = 32  # the tiny DistilBERT's
FOUR_UNITS_MIB = 4 * UNIT * (4 * DIM + ID_BYTES) / MIB  # about four full units per part


def _stats(rows: list[int], quarantined: list[int] | None = None, dim: int = DIM) -> list[dict]:
    q = quarantined or [0] * len(rows)
    return [
        {"unit": i, "rows_out": r, "rows_quarantined": n, "dim": dim}
        for i, (r, n) in enumerate(zip(rows, q, strict=True))
    ]


def test_parts_are_runs_of_consecutive_units_within_the_target():
    stats = _stats([16] * 10, quarantined=[0, 2, 0, 0, 0, 0, 0, 1, 0, 0])
    parts = group_units(list(reversed(stats)), FOUR_UNITS_MIB)  # any order in, unit order out
    assert [p.units for p in parts] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [p.quarantine for p in parts] == [(1,), (7,), ()]
    assert parts[1].files == ["part-00001.parquet", "quarantine/part-00001.parquet"]
    assert parts[2].files == ["part-00002.parquet"]
    # 0: one part per unit; a unit bigger than the target is a part of its own
    assert [p.units for p in group_units(stats[:3], 0)] == [(0,), (1,), (2,)]
    big = _stats([16, 1000, 16, 16])
    assert [p.units for p in group_units(big, FOUR_UNITS_MIB)] == [(0,), (1,), (2, 3)]
    assert group_units([], 128) == []


def test_take_rows_reads_the_rows_asked_for_in_their_order(tmp_path):
    path = tmp_path / "p.parquet"
    with pq.ParquetWriter(path, pa.schema([("x", pa.int64())])) as w:
        for lo, hi in [(0, 5), (5, 5), (5, 12), (12, 20)]:  # an empty row group among them
            w.write_table(pa.table({"x": pa.array(range(lo, hi), pa.int64())}), row_group_size=8)
    fs = pafs.LocalFileSystem()
    rows = [19, 0, 7, 5, 12, 4]
    assert take_rows(fs, str(path), rows, "x").to_pylist() == rows
    with pytest.raises(IndexError):
        take_rows(fs, str(path), [20], "x")


def test_an_older_output_has_one_unit_per_part():
    manifest = {
        "files": ["part-00000.parquet", "part-00003.parquet", "quarantine/part-00003.parquet"]
    }
    assert units_of(manifest) == {"part-00000.parquet": [0], "part-00003.parquet": [3]}
    assert units_of({"part_units": {"part-00000.parquet": [0, 2]}, "files": []}) == {
        "part-00000.parquet": [0, 1, 2]
    }


# ---------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """ROWS listings in two files, with a few null ids and empty texts (quarantined)."""
    d = tmp_path_factory.mktemp("publish") / "catalog"
    d.mkdir()
    ids = [None if i % 97 == 5 else i for i in range(ROWS)]
    titles = ["  " if i % 61 == 7 else f"listing {i} blue cotton shirt" for i in range(ROWS)]
    table = pa.table({"listing_id": pa.array(ids, pa.int64()), "title": titles})
    pq.write_table(table.slice(0, 170), d / "a.parquet")
    pq.write_table(table.slice(170), d / "b.parquet")
    return d


def _embed(catalog: Path, out: Path, *flags: str) -> int:
    argv = ["embed", "--input", str(catalog), "--output", str(out), "--text-template", "{title}"]
    return main([*argv, "--rows-per-unit", str(UNIT), "--num-actors", "1", *flags])


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _snapshot(out: Path) -> dict[str, bytes]:
    """What readers and `--previous` see: manifest, parts, quarantine parts, part hashes."""
    files = ["manifest.json", *_manifest(out)["files"]]
    files += [f"_state/hashes/{p.name}" for p in (out / "_state" / "hashes").iterdir()]
    return {f: (out / f).read_bytes() for f in files}


def _ids(out: Path, sub: str = "") -> list:
    files = sorted((out / sub).glob("part-*.parquet"))
    return [i for f in files for i in pq.read_table(f).column("listing_id").to_pylist()]


def test_a_run_publishes_parts_of_consecutive_units(
    catalog, tmp_path, ray_cluster, tiny_distilbert_dir
):
    out = tmp_path / "out"
    target = f"{FOUR_UNITS_MIB:.6f}"
    # probe queries over an output with quarantined rows: the gate scores the staged embedding
    # files only, never the staged quarantine files beside them
    probe = tmp_path / "probe.jsonl"
    probe.write_text('{"query": "listing 3 blue cotton shirt", "relevant_ids": [3]}\n')
    flags = ["--model", tiny_distilbert_dir, "--target-part-mib", target]
    assert _embed(catalog, out, *flags, "--probe-queries", str(probe)) == 0
    m = _manifest(out)
    assert m["rows_quarantined"] > 0 and m["gate"]["probe"]["queries"] == 1
    spans = units_of(m)
    assert m["units"]["total"] == -(-170 // UNIT) + -(-130 // UNIT)
    assert 1 < len(spans) < m["units"]["total"]
    covered = [u for name in sorted(spans) for u in spans[name]]
    assert covered == list(range(m["units"]["total"]))  # every unit once, in order
    for name, units in spans.items():
        meta = pq.ParquetFile(out / name).metadata
        assert meta.num_row_groups == len(units)  # one row group per unit
        assert meta.num_rows * (4 * DIM + ID_BYTES) <= float(target) * MIB or len(units) == 1
    # every input row exactly once in output or quarantine; the ids in the hashes sidecars
    # match their parts row for row (what --previous reads)
    quarantined = _ids(out, "quarantine")
    embedded = _ids(out)
    assert len(embedded) + len(quarantined) == ROWS == m["rows_in"]
    assert len(set(embedded)) == len(embedded) == m["rows_out"]
    for name in spans:
        hashes = pq.read_table(out / "_state" / "hashes" / name).column("id").to_pylist()
        assert hashes == pq.read_table(out / name).column("listing_id").to_pylist()
    # nothing staged or half-published is left, and readers see only the manifest's files
    assert not list((out / "_staging").rglob("*.parquet"))
    assert not (out / "_state" / "done").exists() and not (out / "_state" / "publish.json").exists()
    listed = {
        str(p.relative_to(out)) for p in out.rglob("part-*.parquet") if "_state" not in str(p)
    }
    assert listed == set(m["files"])


def test_rows_per_part_keeps_one_part_per_unit(catalog, tmp_path, ray_cluster, tiny_distilbert_dir):
    out = tmp_path / "out"
    assert _embed(catalog, out, "--model", tiny_distilbert_dir, "--rows-per-part", "64") == 0
    m = _manifest(out)
    assert len(units_of(m)) == m["units"]["total"] == -(-170 // 64) + -(-130 // 64)
    assert all(pq.read_table(out / f).num_rows <= 64 for f in units_of(m))


def test_a_refused_overwrite_leaves_the_snapshot_readers_see(
    catalog, tmp_path, ray_cluster, tiny_distilbert_dir, monkeypatch
):
    out = tmp_path / "out"
    small = ["--model", tiny_distilbert_dir, "--target-part-mib", f"{FOUR_UNITS_MIB:.6f}"]
    assert _embed(catalog, out, *small) == 0
    before = _snapshot(out)

    # tonight: another setting, and a backend whose vectors are wrong: the parity check refuses
    monkeypatch.setenv("FASHION_BATCH_FAULT_VECTOR_NOISE", "1.0")
    assert _embed(catalog, out, *small, "--normalize", "--overwrite") == 3
    assert _snapshot(out) == before  # yesterday's snapshot is still what readers get
    assert list((out / "_staging").glob("unit-*.parquet"))

    # the same command is refused again: the staged vectors are what the gate checks
    assert _embed(catalog, out, *small, "--normalize", "--overwrite") == 3
    assert _snapshot(out) == before
    # fixed (another backend: a new fingerprint, so the refused units are discarded): published
    monkeypatch.delenv("FASHION_BATCH_FAULT_VECTOR_NOISE")
    fixed = [*small, "--normalize", "--backend", "torch", "--overwrite"]
    assert _embed(catalog, out, *fixed) == 0
    m = _manifest(out)
    assert m["normalized"] and m["units"]["resumed"] == 0 and m["gate"]["passed"]
    listed = {
        str(p.relative_to(out)) for p in out.rglob("part-*.parquet") if "_state" not in str(p)
    }
    assert listed == set(m["files"])
    for name in units_of(m):
        vectors = pq.read_table(out / name).column("embedding").combine_chunks()
        flat = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), DIM)
        np.testing.assert_allclose(np.linalg.norm(flat, axis=1), 1.0, atol=1e-5)


def test_a_publish_killed_midway_is_finished_by_the_rerun(
    catalog, tmp_path, ray_cluster, tiny_distilbert_dir, monkeypatch
):
    out = tmp_path / "out"
    small = ["--model", tiny_distilbert_dir, "--target-part-mib", f"{FOUR_UNITS_MIB:.6f}"]
    assert _embed(catalog, out, *small) == 0
    old_parts = len(units_of(_manifest(out)))
    real = publishing.write_part
    written = []

    def dies_after_one(fs, output, part: Part):
        if written:
            raise KeyboardInterrupt  # the driver is stopped while publishing
        written.append(part.name)
        real(fs, output, part)

    monkeypatch.setattr(publishing, "write_part", dies_after_one)
    monkeypatch.setattr(publishing, "_write_all", _inline)
    bigger = ["--model", tiny_distilbert_dir, "--target-part-mib", f"{2 * FOUR_UNITS_MIB:.6f}"]
    with pytest.raises(KeyboardInterrupt):
        embed_job.run(_config(catalog, out, tiny_distilbert_dir, float(bigger[-1])))
    assert not (out / "manifest.json").exists()  # no reader trusts a half-replaced snapshot
    assert len(list(out.glob("part-*.parquet"))) == old_parts  # old ones beside one new

    monkeypatch.setattr(publishing, "write_part", real)
    assert _embed(catalog, out, *bigger, "--overwrite") == 0
    m = _manifest(out)
    assert m["units"]["resumed"] == m["units"]["total"]  # only published, nothing re-embedded
    assert len(units_of(m)) < old_parts
    listed = {
        str(p.relative_to(out)) for p in out.rglob("part-*.parquet") if "_state" not in str(p)
    }
    assert listed == set(m["files"])  # the old snapshot's extra parts are gone
    assert sorted(p.name for p in (out / "_state" / "hashes").iterdir()) == sorted(units_of(m))
    embedded = _ids(out)
    assert len(embedded) == len(set(embedded)) == m["rows_out"]


def _inline(fs, output, parts):
    for p in parts:
        publishing.write_part(fs, output, p)


def _config(catalog: Path, out: Path, model: str, target_mib: float) -> EmbedConfig:
    return EmbedConfig(
        input=str(catalog),
        output=str(out),
        model=model,
        text_template="{title}",
        rows_per_unit=UNIT,
        num_actors=1,
        target_part_mib=target_mib,
        overwrite=True,
    )
