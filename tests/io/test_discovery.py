"""Input discovery follows the pyarrow.dataset / Spark rules on directories and globs alike:
`_*` and `.*` are skipped at every level, `*` does not cross `/`, `**` does."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.errors import InputError
from fashion_batch.io.inputs import list_input_files
from tests.helpers import run_stages


def _write(path: Path, ids: list[int], text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(ids)
    pq.write_table(
        pa.table({"listing_id": ids, "title": [text] * n, "description": [text] * n}), path
    )


@pytest.fixture
def spark_output(tmp_path: Path) -> Path:
    """What a Spark job leaves: committed parts in partition dirs, _SUCCESS, .crc checksums, and
    a _temporary tree from a failed attempt holding other text for the same ids."""
    root = tmp_path / "listings"
    _write(root / "dt=2026-12-01" / "part-00000-abc.snappy.parquet", [1, 2], "committed")
    _write(root / "dt=2026-12-02" / "part-00000-def.snappy.parquet", [3], "committed")
    _write(
        root / "_temporary" / "0" / "_temporary" / "attempt_1" / "part-00000-abc.snappy.parquet",
        [1, 2],
        "stale attempt",
    )
    _write(root / ".hidden" / "part-9.parquet", [9], "hidden")
    (root / "_SUCCESS").write_text("")
    (root / "dt=2026-12-01" / ".part-00000-abc.snappy.parquet.crc").write_bytes(b"crc")
    (root / "dt=2026-12-01" / "_committed_123").write_text("{}")
    return root


def _names(files: list[str], root: Path) -> list[str]:
    return [str(Path(f).relative_to(root)) for f in files]


COMMITTED = [
    "dt=2026-12-01/part-00000-abc.snappy.parquet",
    "dt=2026-12-02/part-00000-def.snappy.parquet",
]


@pytest.mark.parametrize(
    "pattern, want",
    [
        ("", COMMITTED),  # the directory itself
        ("**/*.parquet", COMMITTED),
        ("**", COMMITTED),
        ("*/*.parquet", COMMITTED),
        ("dt=2026-12-01/*", COMMITTED[:1]),
        ("*.parquet", []),  # `*` does not cross `/`: no parquet file at the top level
    ],
)
def test_spark_layout_reads_only_committed_files(spark_output, pattern, want):
    uri = str(spark_output / pattern) if pattern else str(spark_output)
    if not want:
        with pytest.raises(InputError, match="no .parquet files"):
            list_input_files(uri)
        return
    _, files = list_input_files(uri)
    assert _names(files, spark_output) == want


def test_a_stale_attempt_never_wins_over_the_committed_file(spark_output, tmp_path):
    run_stages(spark_output / "**" / "*.parquet", tmp_path / "out")
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    ids = sorted(i for p in parts for i in pq.read_table(p).column("listing_id").to_pylist())
    assert ids == [1, 2, 3]
    assert not (tmp_path / "out" / "quarantine").exists()  # the stale copies were never read


def test_glob_question_mark_and_class_stay_within_one_component(tmp_path):
    _write(tmp_path / "a1.parquet", [1], "x")
    _write(tmp_path / "a2.parquet", [2], "x")
    _write(tmp_path / "a" / "1.parquet", [3], "x")
    _, files = list_input_files(str(tmp_path / "a?.parquet"))
    assert _names(files, tmp_path) == ["a1.parquet", "a2.parquet"]
    _, files = list_input_files(str(tmp_path / "a[2].parquet"))
    assert _names(files, tmp_path) == ["a2.parquet"]
