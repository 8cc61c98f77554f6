"""Actor-pool sizing over fabricated node lists: the pool never leaves every node without a free
CPU for the prepare/write tasks, whatever the cluster's shape (embed/actors.py says why)."""

from __future__ import annotations

import itertools
import warnings

import pytest

from fashion_batch.embed.actors import actor_options, fits, max_safe_actors, size_pool
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.runtime.nodes import Node

GRID = 10_000  # Ray's resource precision


def cpu_nodes(*cpus: float) -> list[Node]:
    return [Node(cpus=c, host=f"10.0.0.{i}") for i, c in enumerate(cpus)]


def can_starve_every_node(nodes: list[Node], actors: int, cpus: float, gpus: float) -> bool:
    """Brute force: is there a placement of `actors` actors that leaves every node that could
    run a 1-CPU task with less than one free CPU? (Ray's fixed-point accounting: 1/10000.)"""
    a = round(cpus * GRID)
    capacity = [min(fits(n, cpus, gpus), actors) for n in nodes]
    for counts in itertools.product(*(range(int(c) + 1) for c in capacity)):
        if sum(counts) != actors:
            continue
        free = [round(n.cpus * GRID) - k * a for n, k in zip(nodes, counts, strict=True)]
        if all(f < GRID for f in free):
            return True
    return False


def config(**flags) -> EmbedConfig:
    return EmbedConfig(input="x", output="y", **flags)


SHAPES = {  # name: (nodes, (actors, CPUs per actor, GPUs per actor, threads))
    "one 2-CPU node": (cpu_nodes(2), (2, 0.5, 0.0, 1)),
    "two 2-CPU nodes": (cpu_nodes(2, 2), (4, 0.5, 0.0, 1)),
    "a 1-CPU and a 2-CPU node": (cpu_nodes(1, 2), (3, 0.5, 0.0, 1)),
    "three 2-CPU nodes": (cpu_nodes(2, 2, 2), (6, 0.5, 0.0, 1)),
    "one 4-CPU node": (cpu_nodes(4), (4, 0.75, 0.0, 1)),
    "a 2-CPU and a 3-CPU node": (cpu_nodes(2, 3), (5, 0.6666, 0.0, 1)),
    "two 1-CPU nodes": (cpu_nodes(1, 1), (2, 0.0, 0.0, 1)),
    "one 1-CPU node": (cpu_nodes(1), (1, 0.0, 0.0, 1)),
    "bare head, CPU 0 (autoscaler to add nodes)": (cpu_nodes(0), (1, 1.0, 0.0, 1)),
    "bare head and a 2-CPU worker": (cpu_nodes(0, 2), (2, 0.5, 0.0, 1)),
    "a 4-CPU 1-GPU node": ([Node(4, 1)], (1, 1.0, 1.0, 1)),
    "two 4-CPU 1-GPU nodes": ([Node(4, 1, "a"), Node(4, 1, "b")], (2, 1.0, 1.0, 1)),
    "a 1-CPU 1-GPU node": ([Node(1, 1)], (1, 0.0, 1.0, 1)),
    "a 48-CPU 4-GPU node and a CPU head": ([Node(48, 4, "a"), Node(2, 0, "b")], (4, 1.0, 1.0, 1)),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_default_pool_per_cluster_shape(shape):
    nodes, want = SHAPES[shape]
    pool = size_pool(nodes, config())
    assert (pool.max_size, pool.cpus, pool.gpus, pool.threads) == want
    assert pool.min_size == pool.max_size


# The shapes where a task can run at all (a bare CPU:0 head has no CPU to protect until the
# autoscaler adds a node: test_default_pool_per_cluster_shape covers what it gets).
RUNNABLE = [s for s, (nodes, _) in SHAPES.items() if any(n.cpus >= 1 for n in nodes)]


@pytest.mark.parametrize("shape", RUNNABLE)
@pytest.mark.parametrize(
    "flags",
    [{}, {"num_actors": 1}, {"num_actors": 3}, {"min_actors": 1, "max_actors": 5}],
    ids=["default", "1 actor", "3 actors", "1-5 actors"],
)
def test_no_placement_starves_every_node(shape, flags):
    """The guarantee itself, checked by brute force over every placement Ray could choose."""
    nodes, _ = SHAPES[shape]
    pool = size_pool(nodes, config(**flags))
    assert not can_starve_every_node(nodes, pool.max_size, pool.cpus, pool.gpus)


def test_the_fragmentation_hang_of_cluster_totals():
    """Two 2-CPU nodes: "all CPUs but one" over the cluster's totals gave 4 actors of 0.75 CPU,
    two per node, leaving 0.5 CPU on each: the 1-CPU prepare task never ran (issue 20)."""
    nodes = cpu_nodes(2, 2)
    assert can_starve_every_node(nodes, 4, 0.75, 0.0)  # the old sizing
    assert max_safe_actors(nodes, 0.75) == 3
    pool = size_pool(nodes, config())
    assert not can_starve_every_node(nodes, pool.max_size, pool.cpus, pool.gpus)


def test_cpus_per_actor_given_takes_as_many_actors_as_are_safe():
    pool = size_pool(cpu_nodes(2, 2), config(cpus_per_actor=1.0))
    assert (pool.max_size, pool.cpus, pool.threads) == (3, 1.0, 1)
    assert not can_starve_every_node(cpu_nodes(2, 2), 3, 1.0, 0.0)


def test_gpu_slots_are_counted_per_node():
    """0.6 GPU per actor fits once on each 1-GPU node: 2 actors, not the totals' 2 / 0.6 = 3."""
    nodes = [Node(4, 1, "a"), Node(4, 1, "b")]
    assert size_pool(nodes, config(gpus_per_actor=0.6)).max_size == 2


def test_a_flag_given_wins_even_when_unsafe(caplog):
    pool = size_pool(cpu_nodes(2), config(num_actors=1, cpus_per_actor=2.0))
    assert (pool.max_size, pool.cpus, pool.threads) == (1, 2.0, 2)
    assert "may hold every node's last free CPU" in caplog.text


def test_gpu_request_on_a_cpu_cluster_asks_for_what_was_asked(caplog):
    pool = size_pool(cpu_nodes(2), config(gpus_per_actor=1.0))
    assert (pool.max_size, pool.cpus, pool.gpus) == (1, 1.0, 1.0)
    assert pool.describe() == "1 actor(s) of 1 CPU + 1 GPU each"
    assert "only 0 of the actor pool (1 actor(s) of 1 CPU + 1 GPU each) fit" in caplog.text


# ------------------------------------------------------------------ Ray options of the actors


def test_ray_data_restarts_pool_actors_without_limit():
    """actor_options passes no max_restarts/max_task_retries because Ray Data's default for an
    actor pool is already unbounded; if a Ray upgrade changes that, this fails."""
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import (
        ActorPoolMapOperator,
    )

    args = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    assert args["max_restarts"] == -1 and args["max_task_retries"] == -1


def test_actor_options_forward_fault_hooks_as_runtime_env(monkeypatch):
    monkeypatch.delenv("FASHION_BATCH_FAULT_UNIT_DELAY_S", raising=False)
    assert actor_options() == {}
    monkeypatch.setenv("FASHION_BATCH_FAULT_UNIT_DELAY_S", "1")
    assert actor_options() == {
        "runtime_env": {"env_vars": {"FASHION_BATCH_FAULT_UNIT_DELAY_S": "1"}}
    }


def test_the_pipeline_passes_no_deprecated_ray_remote_args(
    ray_cluster, dirty_catalog, tmp_path, monkeypatch
):
    """Ray deprecates `**ray_remote_args` in map_batches (removed in a later Ray)."""
    from fashion_batch.embed.pipeline import dataset as _dataset
    from fashion_batch.embed.plan import make_plan, unit_dict

    monkeypatch.setenv("FASHION_BATCH_FAULT_UNIT_DELAY_S", "0")  # a runtime_env to pass
    cfg = EmbedConfig(input=str(dirty_catalog), output=str(tmp_path / "o"))
    plan = make_plan(cfg)
    pool = size_pool(cpu_nodes(2), cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _dataset(cfg, plan, [unit_dict(u) for u in plan.units], pool)
    assert not [w for w in caught if "ray_remote_args" in str(w.message)]


# ------------------------------------------------------------------------- stall detection


def test_an_unsatisfiable_pool_fails_within_the_stall_timeout(
    ray_cluster, dirty_catalog, tmp_path, capsys
):
    """One GPU per actor on a CPU-only cluster: the actor can never start. The run ends with exit
    1 and a message naming what the pool asks for and what the cluster has, not a hang."""
    from fashion_batch.cli import main

    out = tmp_path / "o"
    argv = ["embed", "--input", str(dirty_catalog), "--output", str(out)]
    code = main([*argv, "--gpus-per-actor", "1", "--num-actors", "1", "--stall-timeout", "5"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no progress for 5s (--stall-timeout)" in err
    assert "1 actor(s) of 1 CPU + 1 GPU each" in err
    assert "2 CPU" in err  # what the cluster has
    assert not (out / "manifest.json").exists()


def test_stall_timeout_must_be_positive():
    from fashion_batch.errors import InputError

    with pytest.raises(InputError, match="--stall-timeout must be > 0"):
        config(stall_timeout=0)
