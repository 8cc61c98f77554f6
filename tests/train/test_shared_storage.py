"""train refuses a local --storage-path on a cluster whose nodes span hosts, before writing
anything or starting Ray; --shared-fs lets it through. The node list is fabricated."""

from __future__ import annotations

import importlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.runtime.nodes import Node

job = importlib.import_module("fashion_batch.train.job")
TWO_HOSTS = [Node(2, host="10.0.0.5"), Node(2, host="10.0.0.6")]


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray started: past the storage check")


@pytest.fixture
def argv(tmp_path, monkeypatch) -> list[str]:
    n = 80
    rows = {
        "anchor": [f"query number {i}" for i in range(n)],
        "positive": [f"listing {i} that matches query {i}" for i in range(n)],
        "negative": [f"listing {i} that matches nothing" for i in range(n)],
    }
    pq.write_table(pa.table(rows), tmp_path / "t.parquet")
    monkeypatch.setattr(job, "cluster_nodes", lambda: TWO_HOSTS)
    monkeypatch.setattr(job, "init_ray", _no_ray)
    return ["train", "--triplets", str(tmp_path / "t.parquet"), "--output", str(tmp_path / "m")]


def test_local_storage_path_on_two_hosts_is_exit_2_before_writing(argv, tmp_path, capsys):
    assert main([*argv, "--base-model", "builtin:minilm"]) == 2
    err = capsys.readouterr().err
    assert f"--storage-path {tmp_path / 'ray_results'}: a local path on a cluster" in err
    assert "--shared-fs" in err and "s3://" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "ray_results").exists()


def test_shared_fs_passes_the_check(argv, capsys):
    assert main([*argv, "--base-model", "builtin:minilm", "--shared-fs"]) == 1
    assert "Ray started: past the storage check" in capsys.readouterr().err
