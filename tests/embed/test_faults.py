"""Fault injection on a real two-node Ray cluster on this machine: an embedding actor dies, a
whole node dies, the driver is SIGKILLed. Each time the job must finish with exact counts and
every row once. (Training with an injected worker failure that resumes from its checkpoint:
tests/train/test_train.py::test_worker_failure_resumes_from_the_last_checkpoint.)

The cluster is started with `ray start --head` / `ray start --address` on free ports, its own
--temp-dir and its own process groups, and torn down by killing exactly those processes (and their
descendants): never a global `ray stop`, which would kill other clusters on the machine. Faults
are injected through the FASHION_BATCH_FAULT_* hook (fashion_batch.runtime.faults), which the
embed job forwards to the actors.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.embed import EmbedConfig, run

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]

RAY = str(Path(sys.executable).with_name("ray"))
ROWS, ROWS_PER_UNIT = 60, 5  # 12 units


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_ports(p: list[int]) -> list[str]:
    return [
        f"--node-manager-port={p[0]}",
        f"--object-manager-port={p[1]}",
        f"--dashboard-agent-listen-port={p[2]}",
        f"--dashboard-agent-grpc-port={p[3]}",
        f"--metrics-export-port={p[4]}",
        f"--runtime-env-agent-port={p[5]}",
        "--object-store-memory=150000000",
        "--disable-usage-stats",
        "--block",
    ]


class Node:
    """One `ray start --block` in its own process group; `kill()` takes it down with every
    process it started (raylet, workers, agents) and nothing else."""

    def __init__(self, args: list[str], log: Path):
        self.ports = args
        self.proc = subprocess.Popen(
            [RAY, "start", *args],
            # inherits RAY_AUTH_MODE=disabled from conftest: driver and nodes agree on auth
            start_new_session=True,
            stdout=open(log, "w"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(True)]
        except psutil.NoSuchProcess:
            family = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in family:  # anything that left the process group
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=30)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster():
    """A head with 1 CPU (the driver's node: read/prepare/write tasks) and a worker node with 2.

    The embedding actor asks for 2 CPUs, so it can only live on a worker node: killing that node
    surely kills the actor mid-job, and the job can only finish if the actor is restarted on a
    replacement node (`add_worker`), as an autoscaler replaces a lost spot node."""
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="fbr-", dir="/tmp"))  # short: Ray's socket paths
    p = _free_ports(16)
    address = f"127.0.0.1:{p[0]}"
    head_args = ["--head", f"--port={p[0]}", f"--ray-client-server-port={p[1]}"]
    head_args += [f"--dashboard-port={p[2]}", "--include-dashboard=false", f"--temp-dir={tmp}"]
    head_args += ["--num-cpus=1", *_node_ports(p[3:9])]
    head = Node(head_args, tmp / "head.log")
    workers = []
    try:

        def gcs_up():
            try:
                socket.create_connection(("127.0.0.1", p[0]), timeout=1).close()
                return True
            except OSError:
                return False

        _wait_for(gcs_up, 120, "the head node")

        def add_worker() -> Node:
            args = [f"--address={address}", "--num-cpus=2", *_node_ports(_free_ports(6))]
            workers.append(Node(args, tmp / f"worker-{len(workers)}.log"))
            return workers[-1]

        add_worker()
        ray.shutdown()  # the suite's shared cluster (conftest: own_ray modules run after it)
        ray.init(address=address, log_to_driver=False)
        _wait_for(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, 180, "2 nodes")
        yield {"address": address, "workers": workers, "add_worker": add_worker}
    finally:
        ray.shutdown()
        for node in [*workers, head]:
            node.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("catalog")
    ids = list(range(1000, 1000 + ROWS))
    table = pa.table(
        {
            "listing_id": pa.array(ids, pa.int64()),
            "title": [f"listing {i}" for i in ids],
            "description": [f"a thing numbered {i}" for i in ids],
        }
    )
    pq.write_table(table.slice(0, 30), d / "a.parquet")
    pq.write_table(table.slice(30), d / "b.parquet")
    return d


def _check_complete(out: Path, manifest: dict) -> None:
    """Exact counts, every id exactly once, the manifest's files and nothing else."""
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (
        ROWS,
        ROWS,
        0,
    )
    ids = pq.read_table(sorted(out.glob("part-*.parquet"))).column("listing_id").to_pylist()
    assert sorted(ids) == list(range(1000, 1000 + ROWS))
    assert sorted(manifest["files"]) == sorted(p.name for p in out.glob("part-*.parquet"))
    assert len(manifest["files"]) == ROWS // ROWS_PER_UNIT
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def _config(catalog, out, model, **kw) -> EmbedConfig:
    return EmbedConfig(
        input=str(catalog),
        output=str(out),
        model=model,
        rows_per_part=ROWS_PER_UNIT,  # one part per unit, as the CLI runs below
        num_actors=1,
        cpus_per_actor=2,  # only fits on a worker node (see `cluster`)
        threads_per_actor=1,
        **kw,
    )


def test_actor_killed_mid_job(cluster, catalog, tiny_distilbert_dir, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv("FASHION_BATCH_FAULT_KILL_AT", "3")  # an actor's 3rd unit
    monkeypatch.setenv("FASHION_BATCH_FAULT_MARKER", str(marker))
    out = tmp_path / "out"
    manifest = run(_config(catalog, out, tiny_distilbert_dir))
    assert marker.exists()  # an actor did die mid-job ...
    _check_complete(out, manifest)  # ... and the job still finished, every row once


def test_node_killed_mid_job(cluster, catalog, tiny_distilbert_dir, tmp_path, monkeypatch):
    """The worker node dies (raylet, actor, tasks: SIGKILL) once it has embedded a unit; a
    replacement node joins, the actor is restarted there and the job finishes."""
    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("FASHION_BATCH_FAULT_TRACE_DIR", str(trace))
    monkeypatch.setenv("FASHION_BATCH_FAULT_UNIT_DELAY_S", "1")
    killed = threading.Event()

    def kill_worker_node():
        try:
            _wait_for(lambda: any(trace.iterdir()), 300, "a unit embedded")
        except TimeoutError:
            return
        cluster["workers"][-1].kill()
        killed.set()
        cluster["add_worker"]()

    killer = threading.Thread(target=kill_worker_node, daemon=True)
    killer.start()
    out = tmp_path / "out"
    manifest = run(_config(catalog, out, tiny_distilbert_dir))
    killer.join(timeout=60)
    assert killed.is_set()
    nodes = {p.name.split("-")[0] for p in trace.iterdir()}
    assert len(nodes) == 2  # units were embedded on the killed node and on its replacement
    _check_complete(out, manifest)


def test_driver_sigkill_then_rerun(cluster, catalog, tiny_distilbert_dir, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "fashion_batch", "embed", "--input", str(catalog)]
    argv += ["--output", str(out), "--model", tiny_distilbert_dir, "--num-actors", "1"]
    argv += ["--cpus-per-actor", "2"]
    argv += ["--rows-per-part", str(ROWS_PER_UNIT), "--threads-per-actor", "1"]
    env = {**os.environ, "RAY_ADDRESS": cluster["address"], "FASHION_BATCH_FAULT_UNIT_DELAY_S": "1"}
    driver = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = out / "_state" / "done"
    try:
        _wait_for(lambda: done.exists() and len(list(done.glob("*.json"))) >= 3, 300, "3 units")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    assert not (out / "manifest.json").exists()
    committed = len(list(done.glob("*.json")))
    assert committed < ROWS // ROWS_PER_UNIT

    env.pop("FASHION_BATCH_FAULT_UNIT_DELAY_S")
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units"]["resumed"] >= committed  # kept, not redone
    assert manifest["units"]["resumed"] + manifest["units"]["done_now"] == ROWS // ROWS_PER_UNIT
    _check_complete(out, manifest)
    # The same bytes as an uninterrupted run.
    ref = tmp_path / "ref"
    run(_config(catalog, ref, tiny_distilbert_dir))
    for part in ref.glob("part-*.parquet"):
        assert (out / part.name).read_bytes() == part.read_bytes()
