"""`embed` and `train` on a multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`,
as Ray's own test suite does): nodes with their own logical CPUs and a custom resource naming
each, started once for the module and reshaped by its tests (`cluster.reshape`: 2+2 CPUs; the
worker lost mid-run; 2+1; the head alone, joined by a node mid-run; train on 2+2; embed on
2+2+2, then train on it with a worker's node lost). What is asserted
comes from what the jobs record (embed: the manifest's per-node actor and unit counts, the commit
records; train: each attempt's start step and the node of every rank in training_metrics.json),
never from timing.

The embed shapes are the ones where sizing the actor pool from cluster totals hung (issue 20):
"all CPUs but one" spread over nodes left every node with less than the one CPU a prepare or
write task needs. The nodes share this machine's disk, so local paths are allowed
(runtime/nodes.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray._common.test_utils import wait_for_condition

from fashion_batch.embed import EmbedConfig, run
from fashion_batch.train.config import METRICS_FILE, TrainConfig
from tests.helpers import make_triplets

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]

ROWS, ROWS_PER_UNIT = 64, 4  # 16 units: more than the actors, so every actor gets work
NODE_ARGS = {"object_store_memory": 100 * 1024 * 1024, "include_dashboard": False}
# A dead node is noticed within seconds, not Ray's production default of tens of seconds.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
STALL_S = 60  # the node-loss test: generous, as the machine may be busy


@pytest.fixture(scope="module")
def cluster():
    """A head node with 2 CPUs and one 2-CPU worker, each with a resource naming it; the driver
    connects to the head. Own ports, and RAY_TMPDIR pointed at a temp dir of its own: Cluster
    records its address in RAY_TMPDIR/ray/ray_current_cluster, where, under /tmp/ray, every
    plain `ray.init()` on the machine would join this cluster instead of starting its own."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the suite's shared cluster (conftest: own_ray modules run after it)
    tmp = tempfile.mkdtemp(prefix="fbmn-", dir="/tmp")  # short: Ray's socket paths
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", tmp)
        c = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "resources": {"head": 1},
                "_system_config": HEALTH_CHECKS,
                **NODE_ARGS,
            },
        )
        c.named = {}  # custom resource name -> (Node, its CPUs)

        def add(name: str, cpus: int):
            node = c.add_node(num_cpus=cpus, resources={name: 1}, **NODE_ARGS)
            c.named[name] = node, cpus
            c.wait_for_nodes()

        def remove(name: str):
            """SIGKILL the node's processes; return once the cluster has declared it dead."""
            node = c.named.pop(name)[0]
            c.remove_node(node, allow_graceful=False)
            wait_for_condition(lambda: node.node_id not in node_names(), timeout=120)

        def reshape(**workers: int):
            """Worker nodes {name: CPUs} beside the head, keeping those already of that shape."""
            for name, (_, cpus) in list(c.named.items()):
                if workers.get(name) != cpus:
                    remove(name)
            for name, cpus in workers.items():
                if name not in c.named:
                    add(name, cpus)

        c.add, c.remove, c.reshape = add, remove, reshape
        try:
            add("worker-1", 2)
            ray.init(address=c.address, log_to_driver=False)
            yield c
        finally:
            ray.shutdown()
            c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("catalog")
    ids = list(range(5000, 5000 + ROWS))
    table = pa.table(
        {
            "listing_id": pa.array(ids, pa.int64()),
            "title": [f"listing {i}" for i in ids],
            "description": [f"a thing numbered {i}" if i % 9 else None for i in ids],
        }
    )
    pq.write_table(table.slice(0, ROWS // 2), d / "a.parquet")
    pq.write_table(table.slice(ROWS // 2), d / "b.parquet")
    return d


def node_names() -> dict[str, str]:
    """{Ray node id: the custom resource naming it} of the alive nodes."""
    import ray

    names = {}
    for n in ray.nodes():
        if n["Alive"]:
            custom = [r for r in n["Resources"] if r == "head" or r.startswith("worker-")]
            names[n["NodeID"]] = custom[0] if custom else "?"
    return names


def embed(catalog: Path, out: Path, model: str, **flags) -> dict:
    config = EmbedConfig(
        input=str(catalog), output=str(out), model=model, rows_per_unit=ROWS_PER_UNIT, **flags
    )
    return run(config)


def check_every_row_once(out: Path, manifest: dict) -> None:
    """Every input row in exactly one of output / quarantine, ids unique, the manifest's files."""
    assert manifest["rows_in"] == ROWS
    assert manifest["rows_out"] + manifest["rows_quarantined"] == ROWS
    ids = pq.read_table(sorted(out.glob("part-*.parquet"))).column("listing_id").to_pylist()
    quarantined = []
    if (out / "quarantine").exists():
        q = pq.read_table(sorted((out / "quarantine").glob("part-*.parquet")))
        quarantined = q.column("listing_id").to_pylist()
    assert len(ids) == len(set(ids)) == manifest["rows_out"]
    assert sorted(ids + quarantined) == list(range(5000, 5000 + ROWS))
    parts = [*out.glob("part-*.parquet"), *out.glob("quarantine/part-*.parquet")]
    written = sorted(p.relative_to(out).as_posix() for p in parts)
    assert sorted(manifest["files"]) == written


@pytest.fixture
def slow_units(monkeypatch):
    """Each unit takes a moment to embed (the fault hook's delay), so units queue up in front of
    the pool and Ray Data hands them to every actor rather than the first one ready."""
    monkeypatch.setenv("FASHION_BATCH_FAULT_UNIT_DELAY_S", "1")


def test_default_pool_on_two_2cpu_nodes_uses_both(
    cluster, catalog, tiny_distilbert_dir, tmp_path, slow_units
):
    """The shape that hung: now 4 actors of 0.5 CPU, and both nodes embed."""
    cluster.reshape(**{"worker-1": 2})
    out = tmp_path / "out"
    manifest = embed(catalog, out, tiny_distilbert_dir)
    check_every_row_once(out, manifest)
    names = node_names()
    per_node = {names[node]: counts for node, counts in manifest["nodes"].items()}
    assert set(per_node) == {"head", "worker-1"}
    assert all(c["actors"] >= 1 for c in per_node.values())
    assert sum(c["actors"] for c in per_node.values()) <= 4
    assert sum(c["units"] for c in per_node.values()) == ROWS // ROWS_PER_UNIT


def test_worker_node_lost_mid_run(
    cluster, catalog, tiny_distilbert_dir, tmp_path, slow_units, monkeypatch
):
    """The worker node dies (its processes SIGKILLed) once it has started embedding a unit and
    3 units are committed. The run either finishes on the head or, if the restarted actors leave
    the head no CPU for the tasks, fails after --stall-timeout (exit 1); then the rerun finishes
    without redoing a committed unit. Either way every row is in exactly one of output /
    quarantine, once."""
    from fashion_batch.embed.pipeline import StallError

    cluster.reshape(**{"worker-1": 2})
    out = tmp_path / "out"
    done = out / "_state" / "done"
    trace = tmp_path / "trace"  # the fault hook records each unit's node as an actor starts it
    trace.mkdir()
    monkeypatch.setenv("FASHION_BATCH_FAULT_TRACE_DIR", str(trace))
    worker = {name: node for node, name in node_names().items()}["worker-1"]
    killed = threading.Event()
    committed_at_kill: list[int] = []

    def committed() -> int:
        return len(list(done.glob("*.json"))) if done.exists() else 0

    def worker_did_work() -> bool:
        return committed() >= 3 and any(p.name.startswith(worker) for p in trace.iterdir())

    def kill_the_worker_once_it_did_work():
        finished = out / "manifest.json"
        wait_for_condition(lambda: worker_did_work() or finished.exists(), timeout=600)
        if finished.exists():
            return  # the head did everything: the assertion on `killed` below says so
        committed_at_kill.append(committed())
        cluster.remove("worker-1")
        killed.set()

    killer = threading.Thread(target=kill_the_worker_once_it_did_work, daemon=True)
    killer.start()
    try:
        manifest = embed(catalog, out, tiny_distilbert_dir, stall_timeout=STALL_S)
    except StallError:
        killer.join()
        assert killed.is_set() and not (out / "manifest.json").exists()
        manifest = embed(catalog, out, tiny_distilbert_dir, stall_timeout=STALL_S)
        assert manifest["units"]["resumed"] >= committed_at_kill[0]  # kept, not redone
    killer.join()
    assert killed.is_set()
    check_every_row_once(out, manifest)
    assert set(node_names().values()) == {"head"}


def test_default_pool_on_a_2cpu_and_a_1cpu_node(cluster, catalog, tiny_distilbert_dir, tmp_path):
    cluster.reshape(**{"worker-1": 1})
    out = tmp_path / "out"
    manifest = embed(catalog, out, tiny_distilbert_dir)
    check_every_row_once(out, manifest)


def test_a_node_added_mid_run_grows_the_pool_to_max_actors(
    cluster, catalog, tiny_distilbert_dir, tmp_path, monkeypatch
):
    """The head alone (2 CPUs), `--min-actors 1 --max-actors 4`: every unit is held (fault hook)
    once an actor has traced it, so the pool can be read from the trace. Ray Data's budget holds
    the pool at 3 actors on the head alone; a 2-CPU node joins; once Ray Data's autoscaling
    coordinator has re-read the nodes, the pool grows to --max-actors, and the run finishes.

    What this records, and what it cannot promise (docs/guarantees.md, "A node that joins
    mid-run"): the grown pool's actor is placed by Ray's SPREAD round robin, on the new node or on
    the head, which still has room because the pool is sized so that --max-actors actors fit the
    nodes alive at start. So the test asserts the growth and that the manifest's per-node counts
    are where the actors ran, not that the new node embedded."""
    cluster.reshape()  # the head alone
    out = tmp_path / "out"
    trace, hold = tmp_path / "trace", tmp_path / "hold"
    trace.mkdir()
    hold.mkdir()
    monkeypatch.setenv("FASHION_BATCH_FAULT_TRACE_DIR", str(trace))
    monkeypatch.setenv("FASHION_BATCH_FAULT_HOLD_UNITS_DIR", str(hold))
    result: dict = {}

    def job():
        try:
            result["manifest"] = embed(
                catalog, out, tiny_distilbert_dir, min_actors=1, max_actors=4
            )
        except BaseException as e:  # re-raised in the test's thread below
            result["error"] = e

    def actors() -> set[str]:
        """'<node id>-<pid>' of each actor that has started a unit."""
        return {p.name.rsplit("-", 1)[0] for p in trace.iterdir()}

    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    try:
        # Ray Data's reservation on 2 CPUs lets the 0.25-CPU actors' stage grow to 3, not 4.
        wait_for_condition(lambda: len(actors()) == 3 or not runner.is_alive(), timeout=300)
        before = actors()
        assert len(before) == 3, result
        cluster.add("worker-2", 2)  # the main thread: Cluster.add_node is not thread-safe
        wait_for_condition(lambda: len(actors()) == 4 or not runner.is_alive(), timeout=120)
        assert len(actors()) == 4, result
    finally:
        (hold / "release").touch()
        runner.join(timeout=300)
    if "error" in result:
        raise result["error"]
    manifest = result["manifest"]
    check_every_row_once(out, manifest)
    names = node_names()
    per_node = {names[node]: c["actors"] for node, c in manifest["nodes"].items()}
    traced = Counter(names[actor.split("-")[0]] for actor in actors())
    assert per_node == traced  # the manifest says where the actors ran
    assert sum(per_node.values()) == 4 and per_node["head"] >= 3
    assert set(per_node) <= {"head", "worker-2"}


# ---------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def triplets(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("triplets") / "train.parquet"
    pq.write_table(pa.table(make_triplets()), path)
    return str(path)


def train_config(tmp_path: Path, triplets: str, base: str, **changes) -> TrainConfig:
    """2 workers of 2 CPUs each: on 2-CPU nodes, each worker takes a node of its own. Nothing
    held out (no evaluation, no gate): what is under test is where the workers run."""
    settings = dict(
        triplets=triplets,
        output=str(tmp_path / "model"),
        base_model=base,
        num_workers=2,
        cpus_per_worker=2,
        epochs=1,
        eval_split=0,
        max_seq_length=32,
        logging_steps=1,
        storage_path=str(tmp_path / "ray_results"),
    )
    return TrainConfig(**{**settings, **changes})


def test_train_runs_its_two_workers_on_two_nodes(cluster, triplets, tiny_distilbert_dir, tmp_path):
    from fashion_batch.train.job import run as train

    cluster.reshape(**{"worker-2": 2})  # the head and one worker, 2 CPUs each
    config = train_config(tmp_path, triplets, tiny_distilbert_dir)
    metrics = train(config)
    (attempt,) = metrics["attempts"]  # where the workers ran, as rank 0 recorded it
    names = node_names()
    assert sorted(names[node] for node in attempt["nodes"]) == ["head", "worker-2"]
    assert metrics["num_workers"] == attempt["world_size"] == 2
    assert metrics["steps"] == metrics["steps_per_epoch"] >= 1
    assert json.loads(Path(config.output, METRICS_FILE).read_text())["attempts"] == [attempt]


def test_default_pool_on_three_2cpu_nodes(cluster, catalog, tiny_distilbert_dir, tmp_path):
    """2+2+2 (the shape the next test trains on): the default sizing leaves every node a CPU
    for the prepare/write tasks, so the run finishes with every row once."""
    cluster.reshape(**{"worker-2": 2, "worker-3": 2})
    out = tmp_path / "out"
    manifest = embed(catalog, out, tiny_distilbert_dir)
    check_every_row_once(out, manifest)
    names = node_names()
    per_node = {names[node]: counts for node, counts in manifest["nodes"].items()}
    assert set(per_node) <= {"head", "worker-2", "worker-3"}
    assert sum(c["units"] for c in per_node.values()) == ROWS // ROWS_PER_UNIT


def test_train_resumes_on_the_surviving_nodes_after_losing_a_workers_node(
    cluster, triplets, tiny_distilbert_dir, tmp_path, monkeypatch
):
    """Three 2-CPU nodes, 2 workers of 2 CPUs. Both workers hold after step 2 (fault hook) once
    its checkpoint is reported; when Ray Train has registered it, the node of a worker that is
    not on the head is SIGKILLed. With `max_failures=1` the worker group restarts on the two
    nodes left and resumes from step 2; the run records each attempt's start step and nodes."""
    from fashion_batch.train.job import run as train

    cluster.reshape(**{"worker-2": 2, "worker-3": 2})
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv("FASHION_BATCH_FAULT_HOLD_AT_STEP", "2")
    monkeypatch.setenv("FASHION_BATCH_FAULT_HOLD_DIR", str(hold))
    config = train_config(
        tmp_path, triplets, tiny_distilbert_dir, epochs=2, checkpoint_steps=2, max_failures=1
    )
    snapshot = Path(config.storage_path, config.name, "checkpoint_manager_snapshot.json")
    killed: list[str] = []  # the Ray node id of the node removed

    def checkpoint_registered() -> bool:
        try:
            return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    def held_nodes() -> set[str]:
        return {p.name.rsplit("-rank", 1)[0] for p in hold.glob("*-rank*")}

    def kill_a_workers_node():
        wait_for_condition(
            lambda: len(list(hold.glob("*-rank*"))) == 2 and checkpoint_registered(), timeout=600
        )
        names = node_names()
        victim = next(node for node in sorted(held_nodes()) if names[node] != "head")
        cluster.remove(names[victim])
        killed.append(victim)

    killer = threading.Thread(target=kill_a_workers_node, daemon=True)
    killer.start()
    try:
        metrics = train(config)
    finally:
        killer.join(timeout=600)
        (hold / "release").touch()
    assert len(killed) == 1
    first, second = metrics["attempts"]
    assert first["start_step"] == 0 and killed[0] in first["nodes"]
    assert second["start_step"] == 2  # from the checkpoint, not from the start
    alive = node_names()
    assert killed[0] not in second["nodes"] and set(second["nodes"]) <= set(alive)
    assert len(set(first["nodes"])) == len(set(second["nodes"])) == 2
    steps = config.epochs * metrics["steps_per_epoch"]
    assert metrics["steps"] == steps
    assert [entry["step"] for entry in metrics["loss"]] == list(range(1, steps + 1))
