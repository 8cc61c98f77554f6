"""The in-process runner: the embed pipeline's three stages (pipeline.stages: PrepareUnits →
EmbedUnits → WriteUnits, the callables Ray Data runs) in this process, one unit after another,
the model loaded once and given the machine's cores as intra-op threads.

Why it exists: on one machine without a GPU, Ray's start (its daemons, Ray Data's own actors, an
actor process per core importing the model's runtime) costs seconds before the first unit, and
one ONNX Runtime or torch session with a thread per core embeds about as fast as that many
single-thread actors (docs/performance.md). `choose` keeps Ray wherever it does what this
cannot: a cluster to join or already joined, GPUs, an actor pool the flags size, many cores.

While the model encodes a unit (ONNX Runtime and torch release the GIL), one background thread
prepares the next unit and writes the previous one. Units commit one by one as on Ray
(state.py), so a failed or killed run resumes from its last written unit; what Ray adds and this
does not is retrying a unit whose process died, and `--stall-timeout` (nothing here waits on a
resource)."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from fashion_batch.embed import manifest as manifests
from fashion_batch.embed.actors import PoolSize
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.encode import EmbedUnits
from fashion_batch.embed.pipeline import listings, stages
from fashion_batch.embed.plan import Plan
from fashion_batch.runtime.progress import Progress
from fashion_batch.runtime.ray import ray_running

log = logging.getLogger(__name__)

# `--runner auto` stays on Ray above this many CPUs: one session's intra-op threads keep pace
# with single-thread actors on a few cores, while on many cores separate actors scale better
# (actors.size_pool says why one thread per actor).
LOCAL_MAX_CPUS = 4
# The (node, actor) the manifest and the ledger record for units embedded here.
WHERE = ("local", "in-process")


def choose(config: EmbedConfig) -> str:
    """ "ray" or "local": `--runner` if given; for auto, local unless `ray_reason` says why not."""
    if config.runner != "auto":
        return config.runner
    reason = ray_reason(config)
    log.info("--runner auto: %s", f"ray ({reason})" if reason else "local")
    return "ray" if reason else "local"


def ray_reason(config: EmbedConfig) -> str | None:
    """Why `--runner auto` runs on Ray, or None when nothing asks for it."""
    if ray_running():
        return "this process is connected to Ray"
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":  # `local`: Ray's "start one, join none", not a demand
        return "RAY_ADDRESS names a cluster"
    flags = config.pool_flags()
    if flags:
        return f"{', '.join(flags)} sizes an actor pool"
    if gpu_here():
        return "this machine has a GPU"
    n = cpus()
    if n > LOCAL_MAX_CPUS:
        return f"{n} CPUs: more than {LOCAL_MAX_CPUS}, where single-thread actors scale better"
    if not address and _ray_cluster_here():
        return "a `ray start` cluster runs on this machine"
    return None


def cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. a container's or taskset's cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_here() -> bool:
    """Whether an NVIDIA GPU is visible here, without importing torch (the driver's device
    list; CUDA_VISIBLE_DEVICES="" or -1 hides them)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def _ray_cluster_here() -> bool:
    """Whether `ray.init()` would join a cluster (a `ray start` one on this machine), decided as
    Ray decides it (runtime.nodes.cluster_nodes does the same). Ray finds one only through the
    address file `ray start` leaves in its temp dir, so where no candidate dir has that file the
    answer is no without importing Ray."""
    dirs = {os.environ.get("RAY_TMPDIR"), os.environ.get("TMPDIR"), "/tmp"} - {None}
    if not any(os.path.exists(os.path.join(d, "ray", "ray_current_cluster")) for d in dirs):
        return False
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(None) is not None


def pool(config: EmbedConfig) -> PoolSize:
    """What the progress line, the ledger and the drift report say of the local runner."""
    threads = config.threads_per_actor or cpus()
    return PoolSize(1, 1, float(cpus()), 0.0, threads, in_process=True)


def stream(
    config: EmbedConfig,
    plan: Plan,
    items: list[dict],
    actors: PoolSize,
    progress: Progress,
    clock: manifests.Clock,
) -> list[dict]:
    """Run the units here; return the writers' statistics rows (as pipeline.stream does)."""
    prepare, embed_args, write = stages(config, plan, actors.threads)
    embed = EmbedUnits(where=WHERE, device="cpu", **embed_args)
    clock.mark("model_ready")  # the start-up is over: from here on every second is per-row work
    stats: list[dict] = []
    written: deque[Future] = deque()
    lock = threading.Lock()

    def counted(future: Future) -> None:  # as each write finishes (in the io thread, mostly)
        if future.exception() is None:
            rows = future.result().to_pylist()
            with lock:
                clock.mark("first_unit")
                stats.extend(rows)
                progress.advance(listings(rows))

    with ThreadPoolExecutor(1, thread_name_prefix="fashion-batch-io") as io:
        prepared = io.submit(prepare, pa.Table.from_pylist(items[:1]))
        for i in range(len(items)):
            unit = prepared.result()
            if i + 1 < len(items):
                prepared = io.submit(prepare, pa.Table.from_pylist(items[i + 1 : i + 2]))
            written.append(io.submit(write, embed(unit)))
            written[-1].add_done_callback(counted)
            while written and written[0].done():
                written.popleft().result()  # a failed write fails the run now, not at the end
        for future in written:
            future.result()
    return stats
