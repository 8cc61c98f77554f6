import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.embed.layout import read_manifest
from fashion_batch.embed.plan import Unit, find_duplicate_rows, plan_units, read_unit, unit_dict
from fashion_batch.embed.state import RunState
from fashion_batch.errors import InputError
from fashion_batch.io.atomic import write_atomic, write_json_atomic
from fashion_batch.io.fs import filesystem
from fashion_batch.io.inputs import list_input_files
from tests.helpers import dirty_table


def test_lists_a_file_a_directory_and_a_glob(dirty_catalog):
    (dirty_catalog / "_SUCCESS").write_text("")
    (dirty_catalog / "notes.txt").write_text("not data")
    _, files = list_input_files(str(dirty_catalog))
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-0.parquet", "part-1.parquet"]
    _, one = list_input_files(str(dirty_catalog / "part-1.parquet"))
    assert one == files[1:]
    _, globbed = list_input_files(str(dirty_catalog / "part-*.parquet"))
    assert globbed == files


def test_directory_listing_skips_hidden_and_underscore_folders(dirty_catalog):
    """e.g. an embed output's `_state/hashes/part-*.parquet` or a `.part-*.tmp-*` temporary."""
    for sub in ("_state/hashes", ".cache", "2026/_tmp"):
        (dirty_catalog / sub).mkdir(parents=True)
        pq.write_table(dirty_table(), dirty_catalog / sub / "part-9.parquet")
    pq.write_table(dirty_table(), dirty_catalog / ".part-2.parquet.tmp-1234")
    (dirty_catalog / "2026").joinpath("part-3.parquet").write_bytes(
        (dirty_catalog / "part-0.parquet").read_bytes()
    )
    _, files = list_input_files(str(dirty_catalog))
    rel = [f[len(str(dirty_catalog)) + 1 :] for f in files]
    assert rel == ["2026/part-3.parquet", "part-0.parquet", "part-1.parquet"]


@pytest.mark.parametrize("suffix", ["missing-dir", "missing-dir/*.parquet"])
def test_missing_input_is_an_input_error(tmp_path, suffix):
    with pytest.raises(InputError, match="missing-dir"):
        list_input_files(str(tmp_path / suffix))


def test_plan_cuts_row_groups_into_units(tmp_path):
    table = dirty_table()
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=4)  # groups of 4, 4, 2
    fs, files = list_input_files(str(tmp_path))
    units, id_type, rows = plan_units(fs, files, "listing_id", ["title"], 3)
    assert rows == len(table) and id_type == pa.int64()
    assert [(u.row_group, u.offset, u.length, u.file_row) for u in units] == [
        (0, 0, 3, 0),
        (0, 3, 1, 3),
        (1, 0, 3, 4),
        (1, 3, 1, 7),
        (2, 0, 2, 8),
    ]
    assert [u.index for u in units] == list(range(5))
    assert units[0].name == "unit-00000.parquet"
    got = pa.concat_tables(read_unit(fs, u, ["listing_id"]) for u in units)
    assert got.column(0).to_pylist() == table.column("listing_id").to_pylist()


def test_missing_column_names_the_column_and_file(dirty_catalog):
    fs, files = list_input_files(str(dirty_catalog))
    with pytest.raises(InputError, match=r"part-0\.parquet: missing column 'brand'"):
        plan_units(fs, files, "listing_id", ["title", "brand"], 100)
    with pytest.raises(InputError, match="missing column 'sku'"):
        plan_units(fs, files, "sku", ["title"], 100)


def test_corrupt_file_is_named(dirty_catalog):
    (dirty_catalog / "part-2.parquet").write_bytes(b"PAR1 this is not parquet")
    fs, files = list_input_files(str(dirty_catalog))
    with pytest.raises(InputError, match=r"part-2\.parquet: not a readable Parquet file"):
        plan_units(fs, files, "listing_id", ["title"], 100)


def test_nested_and_inconsistent_id_types_are_refused(tmp_path):
    pq.write_table(
        pa.table({"listing_id": [[1], [2]], "title": ["a", "b"]}), tmp_path / "a.parquet"
    )
    fs, files = list_input_files(str(tmp_path))
    with pytest.raises(InputError, match="nested type"):
        plan_units(fs, files, "listing_id", ["title"], 100)
    pq.write_table(pa.table({"listing_id": [1], "title": ["a"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"listing_id": ["2"], "title": ["b"]}), tmp_path / "b.parquet")
    fs, files = list_input_files(str(tmp_path))
    with pytest.raises(InputError, match=r"b\.parquet: id column"):
        plan_units(fs, files, "listing_id", ["title"], 100)


def test_first_occurrence_of_a_duplicated_id_wins(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b", "a", None, None]}), tmp_path / "0.parquet")
    pq.write_table(pa.table({"id": ["c", "b", "c", "d"]}), tmp_path / "1.parquet")
    fs, files = list_input_files(str(tmp_path))
    dups = find_duplicate_rows(fs, files, "id")
    assert {k.rsplit("/", 1)[1]: v.tolist() for k, v in dups.items()} == {
        "0.parquet": [2],  # the second "a"; nulls are missing_id, not duplicates
        "1.parquet": [1, 2],  # "b" (first seen in file 0) and the second "c"
    }


def test_atomic_writes_and_clearing_an_output(tmp_path):
    fs, out = filesystem(str(tmp_path / "out"))
    write_atomic(fs, pa.table({"x": [1]}), f"{out}/part-00000.parquet")
    write_atomic(fs, pa.table({"x": [2]}), f"{out}/quarantine/part-00000.parquet")
    files = ["part-00000.parquet", "quarantine/part-00000.parquet"]
    write_json_atomic(fs, {"rows_in": 2, "files": files}, f"{out}/manifest.json")
    (tmp_path / "out" / "keep-me.txt").write_text("not ours")
    assert read_manifest(fs, out) == {"rows_in": 2, "files": files}
    assert not list((tmp_path / "out").rglob("*.tmp-*"))
    RunState(fs, out).clear()  # removes what the job wrote, and only that
    left = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert left == ["keep-me.txt"]
    assert read_manifest(fs, out) is None
    json.dumps(unit_dict(Unit(0, "p", 0, 0, 1, 0)))
