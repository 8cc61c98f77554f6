"""How the planner cuts an input into units (no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from fashion_batch.embed.plan import MIN_UNIT_ROWS, MIN_UNITS, plan_units, unit_rows
from fashion_batch.io.fs import filesystem


def test_unit_rows_caps_at_the_flag_and_splits_small_inputs():
    assert unit_rows(10_000_000, 4096) == 4096
    assert unit_rows(3000, 4096) == MIN_UNIT_ROWS  # not one unit of 3,000
    assert unit_rows(40_000, 4096) == -(-40_000 // MIN_UNITS)
    assert unit_rows(100, 4096) == MIN_UNIT_ROWS
    assert unit_rows(3000, 64) == 64  # an explicit smaller --rows-per-part wins


def test_a_small_single_file_gives_every_actor_work(tmp_path):
    """A 3,000-row file used to be one unit of the default 4,096 rows: one actor embedded the
    whole catalog while the others idled."""
    pq.write_table(
        pa.table({"listing_id": range(3000), "title": ["x"] * 3000}), tmp_path / "a.parquet"
    )
    fs, _ = filesystem(str(tmp_path))
    units, _, rows = plan_units(fs, [str(tmp_path / "a.parquet")], "listing_id", ["title"], 4096)
    assert rows == 3000 and len(units) == -(-3000 // MIN_UNIT_ROWS)
    assert sum(u.length for u in units) == 3000
    assert [u.file_row for u in units] == [i * MIN_UNIT_ROWS for i in range(len(units))]
