"""Run state: what a resume trusts (docs/guarantees.md, "Reruns")."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from fashion_batch.embed.state import RunState, fingerprint
from fashion_batch.io.atomic import write_atomic, write_json_atomic
from fashion_batch.io.fs import filesystem


def _write_ids(path, ids: list[int]) -> None:
    table = pa.table({"listing_id": pa.array(ids, pa.int64()), "title": ["same width"] * len(ids)})
    pq.write_table(table, path, compression="none", use_dictionary=False)


def test_a_file_rewritten_with_the_same_size_and_mtime_is_another_input(tmp_path):
    path = tmp_path / "part-0.parquet"
    _write_ids(path, [1, 2, 3])
    stat = os.stat(path)
    fs, _ = filesystem(str(tmp_path))
    before = fingerprint(fs, [str(path)], "model", {})
    _write_ids(path, [4, 5, 6])  # other rows, same byte count ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the same mtime
    assert os.stat(path).st_size == stat.st_size
    assert fingerprint(fs, [str(path)], "model", {})["digest"] != before["digest"]


def test_a_commit_record_of_another_run_is_never_trusted(tmp_path):
    fs, out = filesystem(str(tmp_path / "out"))
    state = RunState(fs, out)
    write_atomic(fs, pa.table({"x": [1]}), f"{out}/_staging/unit-00000.parquet")
    state.write_hashes("_staging/unit-00000.parquet", pa.array([1]), pa.array(["h"]))
    stats = {"unit": 0, "run": "run-a", "files": ["_staging/unit-00000.parquet"], "rows_out": 1}
    write_json_atomic(fs, stats, state.done_path("_staging/unit-00000.parquet"))
    assert state.finished_units("run-a") == {0: stats}
    assert state.finished_units("run-b") == {}
