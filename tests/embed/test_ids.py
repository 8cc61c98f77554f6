"""Ids keep their exact Arrow type and value end to end: no float coercion, NaN/inf ids are
quarantined, duplicates are found for every id type (docs/guarantees.md, "Ids")."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.embed.plan import find_duplicate_rows
from fashion_batch.io.inputs import list_input_files
from tests.helpers import run_stages

# Through float64, 2**53 and 2**53 + 1 are one number, and so are 2**53 + 3 and 2**53 + 4.
BIG = [2**53, 2**53 + 1, 2**53 + 2, 2**53 + 3, 2**53 + 4, 2**63 - 1, -(2**63)]


def _catalog(tmp_path: Path, ids: pa.Array, files: int = 1) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    n = len(ids)
    table = pa.table(
        {
            "listing_id": ids,
            "title": [f"listing number {i}" for i in range(n)],
            "description": ["a red wool coat"] * n,
        }
    )
    step = math.ceil(n / files)
    for f in range(files):
        pq.write_table(table.slice(f * step, step), d / f"part-{f}.parquet")
    return d


def _outputs(out: Path) -> tuple[pa.Table, pa.Table | None]:
    parts = sorted(out.glob("part-*.parquet"))
    got = pa.concat_tables(pq.read_table(p) for p in parts)
    q = sorted((out / "quarantine").glob("part-*.parquet"))
    return got, pa.concat_tables(pq.read_table(p) for p in q) if q else None


def test_int64_ids_beyond_float_precision_beside_a_null_stay_distinct(tmp_path):
    ids = pa.array([*BIG, None], pa.int64())
    d = _catalog(tmp_path, ids)
    fs, files = list_input_files(str(d))
    assert find_duplicate_rows(fs, files, "listing_id") == {}
    run_stages(d, tmp_path / "out", rows_per_unit=10)
    got, q = _outputs(tmp_path / "out")
    assert got.schema.field("listing_id").type == pa.int64()
    assert got.column("listing_id").to_pylist() == BIG
    assert q.column("reason").to_pylist() == ["missing_id"]


def test_big_int_duplicates_across_files_are_found_exactly(tmp_path):
    ids = pa.array([2**53 + 1, None, 2**53, 2**53 + 1, 2**53 + 2, 2**53 + 3, 2**53 + 4], pa.int64())
    d = _catalog(tmp_path, ids, files=2)
    run_stages(d, tmp_path / "out")
    got, q = _outputs(tmp_path / "out")
    want = [2**53, 2**53 + 1, 2**53 + 2, 2**53 + 3, 2**53 + 4]
    assert sorted(got.column("listing_id").to_pylist()) == want
    assert sorted(q.column("reason").to_pylist()) == ["duplicate_id", "missing_id"]


def test_nan_and_inf_float_ids_are_quarantined_as_invalid_id(tmp_path):
    nan, inf = float("nan"), float("inf")
    ids = pa.array([1.5, nan, nan, inf, -inf, 1.5, 2.5, None], pa.float64())
    run_stages(_catalog(tmp_path, ids), tmp_path / "out", rows_per_unit=4)
    got, q = _outputs(tmp_path / "out")
    assert got.column("listing_id").to_pylist() == [1.5, 2.5]
    reasons = q.column("reason").to_pylist()
    assert sorted(reasons) == sorted(["invalid_id"] * 4 + ["duplicate_id", "missing_id"])


@pytest.mark.parametrize(
    "ids",
    [
        pa.array(["a", "b", "a", None, "é", "é"], pa.string()),
        pa.array(["a", "b", "a", None, "é", "é"], pa.large_string()),
        pa.array([b"\x00", b"\xff", b"\x00", None, b"", b""], pa.binary()),
        pa.array([decimal.Decimal("1.10"), decimal.Decimal("2.00")] * 3, pa.decimal128(10, 2)),
        pa.array([dt.datetime(2026, 1, 1, 12), dt.datetime(2026, 1, 2)] * 3, pa.timestamp("us")),
    ],
    ids=["string", "large_string", "binary", "decimal", "timestamp"],
)
def test_duplicates_are_found_and_types_kept_for_every_id_type(tmp_path, ids):
    run_stages(_catalog(tmp_path, ids, files=2), tmp_path / "out")
    got, q = _outputs(tmp_path / "out")
    assert got.schema.field("listing_id").type == ids.type
    out_ids = got.column("listing_id").to_pylist()
    assert len(out_ids) == len(set(out_ids)) == len({i for i in ids.to_pylist() if i is not None})
    assert len(out_ids) + len(q) == len(ids)
