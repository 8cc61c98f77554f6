"""Storage every node sees: which clusters a local path is safe on, over fabricated node lists."""

from __future__ import annotations

import pytest

from fashion_batch.errors import InputError
from fashion_batch.runtime.nodes import Node, check_shared_storage, from_ray, local_paths_are_safe

ONE_HOST = [Node(2, host="10.0.0.5"), Node(2, host="10.0.0.5"), Node(1, host="10.0.0.5")]
TWO_HOSTS = [Node(2, host="10.0.0.5"), Node(2, host="10.0.0.6")]
HEAD_ONLY = [Node(8, host="10.0.0.5")]
BARE_HEAD = [Node(0, host="10.0.0.5")]  # cluster.yaml's head: CPU 0, workers still to start


@pytest.mark.parametrize(
    "nodes, safe",
    [(ONE_HOST, True), (HEAD_ONLY, True), (TWO_HOSTS, False), (BARE_HEAD, False)],
    ids=["one host", "head only", "two hosts", "bare head, workers to come"],
)
def test_local_paths_are_safe_only_on_one_host(nodes, safe):
    assert local_paths_are_safe(nodes) is safe


def test_a_local_path_on_two_hosts_is_refused_naming_the_flag_and_the_way_out():
    paths = {"--input": "s3://b/in/", "--output": "/data/out", "--previous": None}
    with pytest.raises(InputError) as e:
        check_shared_storage(paths, shared_fs=False, nodes=TWO_HOSTS)
    msg = str(e.value)
    assert msg.startswith("--output /data/out: a local path on a cluster")
    assert "10.0.0.5" in msg and "10.0.0.6" in msg
    assert "s3://" in msg and "--shared-fs" in msg


@pytest.mark.parametrize("nodes", [ONE_HOST, HEAD_ONLY, TWO_HOSTS])
def test_s3_paths_and_shared_fs_pass_anywhere(nodes):
    check_shared_storage({"--input": "s3://b/in", "--output": "s3://b/out"}, False, nodes)
    check_shared_storage({"--input": "/nfs/in", "--output": "/nfs/out"}, True, nodes)


def test_a_bare_head_refuses_local_paths():
    with pytest.raises(InputError, match="--input /in: .*no alive node can run a task yet"):
        check_shared_storage({"--input": "/in", "--output": "s3://b/o"}, False, BARE_HEAD)


def test_from_ray_keeps_alive_nodes_and_their_host():
    entries = [
        {"Alive": True, "NodeID": "a", "NodeManagerAddress": "10.0.0.5", "Resources": {"CPU": 2.0}},
        {"Alive": False, "NodeID": "b", "NodeManagerAddress": "10.0.0.6", "Resources": {}},
        {
            "Alive": True,
            "NodeID": "c",
            "NodeManagerAddress": "10.0.0.7",
            "Resources": {"CPU": 4.0, "GPU": 1.0, "node:c": 1.0},
        },
    ]
    nodes = from_ray(entries)
    assert [(n.node_id, n.host, n.cpus, n.gpus) for n in nodes] == [
        ("a", "10.0.0.5", 2.0, 0.0),
        ("c", "10.0.0.7", 4.0, 1.0),
    ]


def test_cluster_nodes_starts_no_ray_when_ray_would_start_a_local_one(monkeypatch):
    """RAY_ADDRESS=local: ray.init() would start a local Ray, one host by construction."""
    import ray

    from fashion_batch.runtime.nodes import cluster_nodes

    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert not ray.is_initialized()
    assert cluster_nodes() is None
    assert not ray.is_initialized()
