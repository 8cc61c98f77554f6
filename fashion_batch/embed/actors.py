"""Sizing and options of the embedding actor pool, decided per node from the alive nodes.

The rule that guarantees progress. Besides the actors, the job runs prepare and write tasks that
each need one whole logical CPU on one node. Ray places the actors wherever they fit, so the pool
must be sized such that *no* placement leaves every node with less than one free CPU. To take the
last free CPU of a node with c CPUs, the actors there must hold more than c − 1 of them: at least
floor((c − 1) / a) + 1 actors of a CPUs each. Starving every node at once therefore takes at least
Σ (floor((c_i − 1) / a) + 1) actors over the nodes with a CPU to give, and a pool one smaller can
never do it, however Ray places, restarts or moves its actors (`max_safe_actors`). Sizing from
cluster totals ("all CPUs but one") does not have this property: on two 2-CPU nodes it gave four
actors of 0.75 CPU, two per node, leaving 0.5 CPU on each and the 1-CPU tasks waiting forever.

Why the actors shrink rather than the tasks asking for fractional CPUs: a task's CPU request is
also how many run at once per node, and a prepare or write task really uses a core while it runs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from fashion_batch.embed.config import EmbedConfig
from fashion_batch.runtime.faults import forwarded_env
from fashion_batch.runtime.nodes import Node, alive_nodes, describe

log = logging.getLogger(__name__)

# Ray accounts resources in units of 1/10000; a request is rounded down to that grid here so the
# guarantee computed in exact arithmetic still holds after Ray's own rounding.
_RESOURCE_GRID = 10_000
_EPS = 1e-9


@dataclass(frozen=True)
class PoolSize:
    """What the pool asks for: `min_size`..`max_size` actors of `cpus` CPUs and `gpus` GPUs each,
    `threads` intra-op threads per actor. `in_process`: no pool, the job's own process embeds
    with `threads` threads (embed/local.py)."""

    min_size: int
    max_size: int
    cpus: float
    gpus: float
    threads: int
    in_process: bool = False

    def strategy(self):
        import ray

        if self.min_size == self.max_size:
            return ray.data.ActorPoolStrategy(size=self.max_size)
        return ray.data.ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size)

    def describe(self) -> str:
        if self.in_process:
            return f"in this process with {self.threads} thread(s) (--runner local)"
        count = (
            str(self.max_size)
            if self.min_size == self.max_size
            else f"{self.min_size}-{self.max_size}"
        )
        ask = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{count} actor(s) of {ask} each"


def _floor(x: float) -> int:
    return math.floor(x + _EPS)


def fits(node: Node, cpus: float, gpus: float) -> float:
    """How many actors of (cpus, gpus) the node holds on its own (inf: unbounded)."""
    n = math.inf
    if cpus > 0:
        n = min(n, _floor(node.cpus / cpus))
    if gpus > 0:
        n = min(n, _floor(node.gpus / gpus))
    return n


def max_safe_actors(nodes: list[Node], cpus: float, gpus: float = 0.0) -> float:
    """The most actors of (cpus, gpus) that can never leave every node without one free CPU.

    Returns -1 when no node has a whole CPU (no task can run at all). When no number of actors
    can take the last free CPU of some node (actors of 0 CPUs, or a node that cannot hold enough
    of them), only where the actors fit bounds the pool: that count (inf if unbounded).
    """
    placeable = sum(fits(n, cpus, gpus) for n in nodes)
    to_starve_all = 0
    for n in nodes:
        if n.cpus < 1 - _EPS:
            continue  # never runs a task: nothing to protect there
        if cpus <= 0:
            return placeable
        to_starve = _floor((n.cpus - 1) / cpus) + 1
        if fits(n, cpus, gpus) < to_starve:
            return placeable  # this node always keeps a free CPU
        to_starve_all += to_starve
    if to_starve_all == 0:
        return -1
    return min(placeable, to_starve_all - 1)


def largest_safe_cpus(nodes: list[Node], actors: int, gpus: float = 0.0) -> float:
    """The largest per-actor CPU request ≤ 1 with which `actors` actors can never starve the
    tasks (`max_safe_actors`); 0 when only actors that reserve no CPU are safe.

    The safe count only changes where c/m or (c − 1)/m crosses a node's CPU count, so those
    points (and 1) are the only candidates worth trying, largest first.
    """
    candidates = {1.0}
    for n in nodes:
        for m in range(1, actors + 1):
            candidates.update({n.cpus / m, (n.cpus - 1) / m})
    for a in sorted((c for c in candidates if 0 < c <= 1), reverse=True):
        a = math.floor(a * _RESOURCE_GRID + _EPS) / _RESOURCE_GRID
        if a > 0 and max_safe_actors(nodes, a, gpus) >= actors:
            return a
    return 0.0


def size_pool(nodes: list[Node], config: EmbedConfig) -> PoolSize:
    """The actor pool for these alive nodes and the flags (a flag given wins).

    Defaults. GPU actors (the cluster has a GPU, or `--gpus-per-actor` > 0): one per GPU slot,
    counted per node (two half-GPU requests do not fit one GPU split over two nodes), with 1 CPU
    each, less if that could starve the tasks. CPU actors: one single-threaded actor per CPU, each
    reserving the largest share ≤ 1 CPU that keeps the module docstring's guarantee: on one 2-CPU
    node 2 actors of 0.5; on two 2-CPU nodes 4 of 0.5; on a 1-CPU node and a 2-CPU node 3 of 0.5.
    Where no share > 0 is safe (only 1-CPU nodes), the actors reserve no CPU.

    Why one thread per actor, not fewer actors with more threads: an intra-op thread pool waits at
    every op for its slowest thread, and on a small node any other process (Ray's raylet, the
    driver, a write task) descheduling one thread stalls them all (docs/performance.md). With
    fewer CPU actors than CPUs (`--num-actors`, `--cpus-per-actor`), the threads default to the
    cluster's CPUs shared among the actors, at most one node's CPUs.
    """
    any_gpu = any(n.gpus >= 1 for n in nodes)
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if any_gpu else 0.0
    total_cpus = sum(n.cpus for n in nodes)
    if config.num_actors is not None:
        low = high = config.num_actors
    elif config.min_actors is not None:
        low, high = config.min_actors, config.max_actors
    elif gpus > 0:
        low = high = max(1, int(sum(fits(n, 0, gpus) for n in nodes)))
    elif config.cpus_per_actor is not None:
        low = high = max(1, int(max_safe_actors(nodes, config.cpus_per_actor)))
    else:
        low = high = max(1, _floor(total_cpus))
    cpus = config.cpus_per_actor
    if cpus is None and not sum(fits(n, _EPS, gpus) for n in nodes):
        # No alive node can hold an actor yet (an autoscaling cluster's bare head, CPU: 0): the
        # nodes Ray's autoscaler adds for it have CPUs to spare; don't squat on the head.
        cpus = 1.0
    elif cpus is None:
        cpus = largest_safe_cpus(nodes, high, gpus)
    threads = config.threads_per_actor
    if threads is None:
        threads = max(1, int(cpus))
        if gpus == 0:  # the CPUs shared among the actors, at most one node's worth
            biggest = max((n.cpus for n in nodes), default=1)
            threads = max(threads, int(min(biggest, total_cpus // high)))
    size = PoolSize(low, high, float(cpus), float(gpus), int(threads))
    _warn_if_stuck(nodes, size)
    return size


def _warn_if_stuck(nodes: list[Node], size: PoolSize) -> None:
    """Say so up front when the pool may wait forever on these nodes (--stall-timeout ends it)."""
    if not any(n.cpus >= 1 for n in nodes):
        return  # nodes still to come (an autoscaling cluster): nothing to judge yet
    placeable = sum(fits(n, size.cpus, size.gpus) for n in nodes)
    if placeable < size.min_size:
        log.warning(
            "only %s of the actor pool (%s) fit the alive nodes (%s); the rest wait for nodes "
            "that have room (an autoscaler may add them) or for --stall-timeout",
            placeable,
            size.describe(),
            describe(nodes),
        )
    elif max_safe_actors(nodes, size.cpus, size.gpus) < size.max_size:
        log.warning(
            "the actor pool (%s) may hold every node's last free CPU on this cluster (%s): the "
            "prepare and write tasks could wait forever; --stall-timeout ends such a run",
            size.describe(),
            describe(nodes),
        )


def actor_settings(config: EmbedConfig, nodes: list[Node] | None = None) -> PoolSize:
    """`size_pool` over the cluster's alive nodes (Ray must be initialized)."""
    return size_pool(alive_nodes() if nodes is None else nodes, config)


def actor_options() -> dict:
    """Named Ray options of the embedding actors, beyond their resources.

    Fault tolerance is Ray Data's own default for an actor pool (ActorPoolMapOperator applies
    `max_restarts=-1`, `max_task_retries=-1` unless told otherwise), so nothing is passed for it:
    a dead actor (its node lost, OOM-killed) is restarted without limit and the unit it was
    embedding retried on the restarted one. A bound on the retries looks safer but is not: when a
    node dies, Ray spends a retry on every failed call to the unreachable actor until the cluster
    declares the node dead, so a small bound fails the whole job (tests/embed/test_faults.py;
    tests/embed/test_actors.py checks the default is still unbounded). Units are written whole and
    idempotently, so a retried unit is never half-written or duplicated.

    FASHION_BATCH_FAULT_* variables (test hooks, fashion_batch.runtime.faults) reach the actors
    through `runtime_env`, a named parameter of `map_batches` (the `**ray_remote_args` catch-all
    is deprecated).
    """
    faults = forwarded_env()
    return {"runtime_env": {"env_vars": faults}} if faults else {}
