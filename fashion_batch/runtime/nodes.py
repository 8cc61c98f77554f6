"""The Ray cluster as the jobs see it: its alive nodes, and whether a local path is safe on it.

Everything here is a pure function over a list of `Node`s except `alive_nodes`, which reads
`ray.nodes()`; the tests fabricate node lists for cluster shapes this machine cannot start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fashion_batch.errors import InputError


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its logical resources and the host it runs on.

    Args:
        cpus, gpus: the node's logical CPU and GPU totals (what Ray schedules against).
        host: the node's IP address (`NodeManagerAddress`): nodes with the same address share a
            machine and so its local disks; two containers on one machine have two addresses.
        node_id: Ray's node id (hex).
        resources: every logical resource of the node (custom ones included).
    """

    cpus: float
    gpus: float = 0.0
    host: str = "127.0.0.1"
    node_id: str = ""
    resources: dict = field(default_factory=dict, compare=False)


def from_ray(entries: list[dict]) -> list[Node]:
    """The alive nodes of a `ray.nodes()` list."""
    return [
        Node(
            cpus=float(e.get("Resources", {}).get("CPU", 0)),
            gpus=float(e.get("Resources", {}).get("GPU", 0)),
            host=e.get("NodeManagerAddress", ""),
            node_id=e.get("NodeID", ""),
            resources=dict(e.get("Resources", {})),
        )
        for e in entries
        if e.get("Alive")
    ]


def alive_nodes() -> list[Node]:
    """The cluster's alive nodes now (Ray must be initialized)."""
    import ray

    return from_ray(ray.nodes())


def cluster_nodes() -> list[Node] | None:
    """The alive nodes of the cluster this process is on or will join; None when `init_ray` would
    start a local Ray of its own, which is one host by construction. Decided the way `ray.init()`
    decides (RAY_ADDRESS, `local`, else a `ray start` cluster on this machine) without starting
    one, so a check before the first write does not start Ray for a run that fails it."""
    import ray

    if not ray.is_initialized():
        from ray._private.services import canonicalize_bootstrap_address

        if canonicalize_bootstrap_address(None) is None:
            return None
        from fashion_batch.runtime.ray import init_ray

        init_ray()
    return alive_nodes()


def describe(nodes: list[Node]) -> str:
    """'2 nodes on 2 hosts: 10.0.0.1 (2 CPU), 10.0.0.2 (2 CPU, 1 GPU)' for error messages."""
    parts = []
    for n in nodes:
        what = f"{n.cpus:g} CPU" + (f", {n.gpus:g} GPU" if n.gpus else "")
        parts.append(f"{n.host} ({what})")
    hosts = len({n.host for n in nodes})
    return f"{len(nodes)} node(s) on {hosts} host(s): " + ", ".join(parts)


def local_paths_are_safe(nodes: list[Node]) -> bool:
    """Whether a local path means the same files to every task of a job on this cluster.

    True when every alive node is on one host (a laptop, a single VM, a multi-node test cluster
    on one machine): every task sees the same disk. False when the nodes sit on more than one
    host: a part written by a task on another host lands on that host's disk, and the run would
    end with exit 0 and its output scattered. Also False when no alive node can run a task (a
    bare head with `CPU: 0`, as in cluster.yaml): the work will run on nodes the autoscaler has
    not started yet, on other hosts.
    """
    if not any(n.cpus > 0 for n in nodes):
        return False
    return len({n.host for n in nodes}) <= 1


def is_local(uri: str) -> bool:
    """A path on a node's own filesystem, as opposed to object storage every node reaches."""
    return not uri.startswith("s3://")


def check_shared_storage(
    paths: dict[str, str | None], shared_fs: bool, nodes: list[Node] | None
) -> None:
    """Refuse a local path on a cluster whose nodes do not share one disk (exit 2).

    Args:
        paths: {flag: path} of every path the job's tasks read or write (None: not given).
        shared_fs: the user says the local paths are on storage every node mounts (NFS, EFS).
        nodes: the cluster's alive nodes (None: a local Ray this process starts, one host).

    Raises:
        InputError: naming the first local path, the cluster, and what to use instead.
    """
    if shared_fs or nodes is None or local_paths_are_safe(nodes):
        return
    for flag, path in paths.items():
        if path is not None and is_local(path):
            where = (
                "no alive node can run a task yet (the work will run on nodes still to start)"
                if not any(n.cpus > 0 for n in nodes)
                else describe(nodes)
            )
            raise InputError(
                f"{flag} {path}: a local path on a cluster whose nodes do not share a disk "
                f"({where}); use an s3:// URI, or pass --shared-fs if {path} is on storage every "
                "node mounts (NFS, EFS)"
            )
