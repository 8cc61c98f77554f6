"""A local path on a cluster that spans hosts is refused before anything is written (exit 2),
and `--shared-fs` lets it through. The cluster is the suite's one-host Ray; the node list the
job sees is fabricated to span two hosts."""

from __future__ import annotations

import pytest

from fashion_batch.cli import main
from fashion_batch.runtime.nodes import Node

# Sized like the shared 2-CPU cluster (so the pool fits it), but on two hosts.
TWO_HOSTS = [Node(2, host="10.0.0.5"), Node(0, host="10.0.0.6")]


@pytest.fixture
def two_hosts(monkeypatch):
    import importlib

    job = importlib.import_module("fashion_batch.embed.job")
    monkeypatch.setattr(job, "alive_nodes", lambda: TWO_HOSTS)


def test_local_output_on_two_hosts_exits_2_before_writing(
    ray_cluster, two_hosts, dirty_catalog, tmp_path, capsys
):
    out = tmp_path / "out"
    code = main(["embed", "--input", str(dirty_catalog), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--input {dirty_catalog}: a local path on a cluster whose nodes do not share" in err
    assert "10.0.0.6" in err and "s3://" in err and "--shared-fs" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists()


def test_shared_fs_runs_on_two_hosts(ray_cluster, two_hosts, dirty_catalog, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["embed", "--input", str(dirty_catalog), "--output", str(out), "--shared-fs"]
    assert main(argv) == 0
    assert (out / "manifest.json").exists()


def test_parts_written_from_two_hosts_get_no_manifest(tmp_path):
    """Nodes that join on another host after the start-up check (an autoscaler's): the run fails
    before its manifest instead of finishing with its parts on two disks."""
    from fashion_batch.embed.config import EmbedConfig
    from fashion_batch.embed.pipeline import check_one_host as _check_one_host

    config = EmbedConfig(input="in", output=str(tmp_path / "o"))
    stats = [{"host": "10.0.0.5"}, {"host": "10.0.0.6"}]
    with pytest.raises(RuntimeError, match="parts were written on 2 hosts"):
        _check_one_host(config, stats)
    _check_one_host(EmbedConfig(input="in", output="s3://b/o"), stats)
    _check_one_host(EmbedConfig(input="in", output=str(tmp_path / "o"), shared_fs=True), stats)
    _check_one_host(config, [{"host": "10.0.0.5"}, {"host": "10.0.0.5"}])
