"""Reruns and output safety (docs/guarantees.md, "Reruns" and "Nothing foreign touched"): a
finished output is only ever this job's result, fashion-batch deletes only files its own records
list, and it never writes where it reads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from tests.helpers import dirty_table


def _catalog(d: Path, rows: slice) -> Path:
    d.mkdir(parents=True)
    pq.write_table(dirty_table().slice(rows.start, rows.stop - rows.start), d / "part-0.parquet")
    return d


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _embed(*args: str) -> int:
    return main(["embed", "--num-actors", "1", "--rows-per-part", "3", *args])


def test_empty_input_gives_an_empty_output_with_a_manifest(tmp_path, caplog):
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(dirty_table().slice(0, 0), d / "part-0.parquet")
    pq.write_table(dirty_table().slice(0, 0), d / "part-1.parquet")
    with caplog.at_level(logging.WARNING):
        assert _embed("--input", str(d), "--output", str(tmp_path / "out")) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == manifest["rows_quarantined"] == 0
    assert manifest["files"] == [] and manifest["dim"] == 384
    assert "no rows" in caplog.text


def test_a_finished_output_of_another_job_is_refused(tmp_path, ray_cluster, tiny_distilbert_dir):
    a = _catalog(tmp_path / "a", slice(0, 6))
    b = _catalog(tmp_path / "b", slice(4, 10))
    out = tmp_path / "out"
    assert _embed("--input", str(a), "--output", str(out)) == 0
    before = _snapshot(out)
    assert _embed("--input", str(a), "--output", str(out)) == 0  # the same job: its result
    assert _snapshot(out) == before
    for other in (["--input", str(b)], ["--input", str(a), "--model", tiny_distilbert_dir]):
        assert _embed(*other, "--output", str(out)) == 2
        assert _snapshot(out) == before
    assert _embed("--input", str(b), "--output", str(out), "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["input"] == str(b)


def test_overwrite_deletes_only_files_its_records_list(tmp_path, ray_cluster):
    a = _catalog(tmp_path / "a", slice(0, 10))
    out = tmp_path / "out"
    assert _embed("--input", str(a), "--output", str(out)) == 0
    foreign = {
        "part-99999.parquet": pa.table({"other": ["tool"]}),
        "quarantine/part-77777.parquet": pa.table({"x": [1]}),
    }
    for name, table in foreign.items():
        pq.write_table(table, out / name)
    (out / "notes.txt").write_text("not ours")
    theirs = {k: v for k, v in _snapshot(out).items() if k in [*foreign, "notes.txt"]}
    assert _embed("--input", str(a), "--output", str(out), "--normalize", "--overwrite") == 0
    after = _snapshot(out)
    assert {k: after.get(k) for k in theirs} == theirs
    manifest = json.loads((out / "manifest.json").read_text())
    assert not set(foreign) & set(manifest["files"])


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_non_empty_output_without_a_record_of_ours_is_refused(tmp_path, overwrite, capsys):
    a = _catalog(tmp_path / "a", slice(0, 10))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's")
    flags = ["--overwrite"] if overwrite else []
    assert _embed("--input", str(a), "--output", str(out), *flags) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert _snapshot(out) == {"notes.txt": b"someone else's"}


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_an_output_that_overlaps_the_input_is_refused(tmp_path, where, capsys):
    a = _catalog(tmp_path / "data" / "in", slice(0, 10))
    out = {"same": a, "inside": a / "embeddings", "containing": tmp_path / "data"}[where]
    before = _snapshot(tmp_path / "data")
    assert _embed("--input", str(a), "--output", str(out)) == 2
    assert "overlaps --input" in capsys.readouterr().err
    assert _snapshot(tmp_path / "data") == before


def test_previous_with_a_missing_part_is_exit_2_naming_it(tmp_path, ray_cluster, capsys):
    a = _catalog(tmp_path / "a", slice(0, 10))
    prev = tmp_path / "prev"
    assert _embed("--input", str(a), "--output", str(prev)) == 0
    manifest = json.loads((prev / "manifest.json").read_text())
    (prev / manifest["files"][0]).unlink()
    capsys.readouterr()
    new = ["--output", str(tmp_path / "new"), "--previous", str(prev)]
    assert _embed("--input", str(a), *new) == 2
    assert f"{manifest['files'][0]}, which is missing" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
