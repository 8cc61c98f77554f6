"""Sizing and options of the embedding actor pool."""

from __future__ import annotations

from fashion_batch.embed.config import EmbedConfig
from fashion_batch.runtime.faults import forwarded_env


def actor_settings(config: EmbedConfig) -> tuple[object, float, float, int]:
    """(ActorPoolStrategy, num_gpus, num_cpus, threads) from flags and cluster resources.

    Defaults: one actor per GPU (1 CPU each) when the cluster has GPUs. On a CPU-only cluster,
    one single-threaded actor per CPU, the actors together reserving all CPUs but one, so a
    logical CPU stays free for the read/prepare/write tasks (design.md pitfall: actors that take
    every CPU starve the reads and the job hangs). Preparing and writing a unit costs little
    next to embedding it, so that CPU does embedding work too.

    Why one thread per actor, not fewer actors with more threads: an intra-op thread pool waits
    at every op for its slowest thread, and on a small node any other process (Ray's raylet, the
    driver, a write task) descheduling one thread stalls them all (docs/performance.md has the
    measurements). A flag given wins: with `--num-actors N` on CPU the threads default to the
    cluster's CPUs shared among the N actors.
    """
    import ray

    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0))
    cluster_cpus = float(resources.get("CPU", 1))
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    cpus = config.cpus_per_actor
    if config.num_actors is not None:
        strategy = ray.data.ActorPoolStrategy(size=config.num_actors)
    elif config.min_actors is not None:
        strategy = ray.data.ActorPoolStrategy(
            min_size=config.min_actors, max_size=config.max_actors
        )
    elif gpus > 0:
        strategy = ray.data.ActorPoolStrategy(size=max(1, int(cluster_gpus / gpus)))
    elif cpus is not None:
        strategy = ray.data.ActorPoolStrategy(size=max(1, int((cluster_cpus - 1) / cpus)))
    else:
        strategy = ray.data.ActorPoolStrategy(size=max(1, int(cluster_cpus)))
    if cpus is None:  # GPU actors: 1; CPU actors: all CPUs but one, shared
        cpus = 1.0 if gpus > 0 else min(1.0, max(0.0, cluster_cpus - 1) / strategy.max_size)
    threads = config.threads_per_actor
    if threads is None:
        threads = max(1, int(cpus))
        if gpus == 0:
            threads = max(threads, int(cluster_cpus // strategy.max_size))
    return strategy, gpus, cpus, threads


def fault_tolerance() -> dict:
    """Ray options of the embedding actors, set here rather than left to Ray Data's defaults.

    A dead actor (its node lost, OOM-killed) is restarted without limit, and the unit it was
    embedding is retried without limit on the restarted one. A bound on the retries looks safer
    but is not: when a node dies, Ray spends a bounded retry on every failed call to the
    unreachable actor until the cluster declares the node dead, so a small bound fails the whole
    job (tests/embed/test_faults.py). The price: a unit whose rows crash the actor process every
    time would be retried forever (none is known: tokenizer errors raise, they don't crash). Units
    are written whole and idempotently, so a retried unit is never half-written or duplicated.
    FASHION_BATCH_FAULT_* variables (test hooks, fashion_batch.runtime.faults) are forwarded to
    the actors.

    The prepare and write tasks keep Ray Data's own default (`max_retries=-1` for system
    failures such as a lost node or worker; an exception raised by our code is not retried).
    Ray deprecates passing these options through `map_batches`; tests/embed/test_faults.py checks
    the job survives.
    """
    args = {"max_restarts": -1, "max_task_retries": -1}
    faults = forwarded_env()
    if faults:
        args["runtime_env"] = {"env_vars": faults}
    return args
