"""The embed job: Parquet listings → Ray Data → sentence-transformers actors → Parquet embeddings.

    plan (driver: footers, schema, duplicates, fingerprint; nothing written)
      → units: one row per planned row range (plan.Unit)
      → PrepareUnits → EmbedUnits (actor pool, GPU when present) → WriteUnits (tasks)
        (prepare runs inside CPU actors, fused by Ray Data; in CPU tasks beside GPU actors);
        on one small machine without a GPU or a cluster, the same stages in this process
        (local.py, `--runner`)
      → the quality gate (gate.py) on the staged units, then publish (publish.py): parts of
        about --target-part-mib, replacing OUTPUT's previous snapshot only now
      → manifest.json last, from the per-unit statistics the writers return
      → `--sink`: the finished output loaded into a LanceDB table (sink.py), its result added to
        the manifest.
    The sink and the drift report's files are written by the run's sidecar process
    (runtime/sidecar.py), which imports lancedb and matplotlib while this one starts Ray.

Reliability (docs/guarantees.md): each unit is committed on its own (state.py), so a re-run of a
killed run's command does only the units that were not committed; `--previous` carries last
night's embeddings of unchanged rows over (incremental.py); lost actors and tasks are retried by
Ray Data (actors.actor_options); a run in which nothing moves for `--stall-timeout` seconds fails
naming what it waits for (`pipeline.stream`); a local path on a cluster that spans hosts is
refused before the first write (runtime/nodes.py).

Launch: `fashion-batch embed --input ... --output ...` locally (an implicit local Ray), or on a
cluster `ray job submit --working-dir . -- python jobs/embed_catalog.py --input s3://... ...`.
"""

from __future__ import annotations

import logging
import posixpath
import time

from fashion_batch.embed import drift, gate, ledger, local, pipeline, recheck
from fashion_batch.embed import manifest as manifests
from fashion_batch.embed import sink as sinks
from fashion_batch.embed.actors import PoolSize, size_pool
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.incremental import plan_carry
from fashion_batch.embed.layout import MANIFEST
from fashion_batch.embed.plan import Plan, make_plan, unit_dict
from fashion_batch.embed.publish import publish, uses_ray
from fashion_batch.encoders.registry import backend, resolve
from fashion_batch.errors import InputError
from fashion_batch.io import plots
from fashion_batch.io.atomic import write_json_atomic
from fashion_batch.io.fs import redact
from fashion_batch.runtime.nodes import alive_nodes, check_shared_storage
from fashion_batch.runtime.ray import init_ray, release_ray
from fashion_batch.runtime.sidecar import Sidecar
from fashion_batch.sinks import require_lancedb

log = logging.getLogger(__name__)


def run(config: EmbedConfig) -> dict:
    """Run the embed job; return the manifest. Bad input raises InputError/ModelError before any
    file is written."""
    clock = manifests.Clock()
    if config.sink:
        require_lancedb()  # before planning: a missing extra is exit 2 at once
    runner = local.choose(config)
    if not (config.sink or config.previous):
        return _run(config, clock, None, runner)
    # The sink and drift.png run in a second process, whose imports (lancedb, matplotlib) overlap
    # planning and Ray's start-up instead of adding to the run (runtime/sidecar.py).
    with Sidecar() as side:
        return _run(config, clock, side, runner)


def _run(config: EmbedConfig, clock: manifests.Clock, side: Sidecar | None, runner: str) -> dict:
    # [1] Check everything that can be wrong with the input before writing anything.
    sink = sinks.Sink(config, side) if config.sink else None  # the sidecar opens the table
    if config.previous:
        side.submit(plots.preload)  # drift.png's matplotlib
    plan = make_plan(config)
    clock.mark("inputs_checked")
    sinks.check(config, plan)
    if plan.finished is not None and not config.overwrite:
        log.warning("%s is a finished output (manifest.json); --overwrite replaces it", plan.output)
        if sink:  # a rerun after a sink failure, or --sink added: load it, embed nothing
            return sink.sync(plan, plan.finished)
        return plan.finished
    probe = gate.load_probe(config)  # a bad --probe-queries file is exit 2 before any write
    drift.check(config, plan)
    if not plan.units:
        log.warning("%s holds no rows: the output will be empty", redact(config.input))
    actors = _start_actors(config, plan, runner) if plan.units else None
    clock.mark("ray_ready")
    if sink:
        sink.checked()  # a table of that name that is not ours: exit 2, still nothing written

    # [2] Resume or start: the first write of the run (state.py explains the commit log).
    replace = plan.finished is not None  # --overwrite of a finished output
    done = plan.run_state.start(plan.fingerprint, config.overwrite, replace_finished=replace)
    todo = [u for u in plan.units if u.index not in done]
    if done:
        log.warning("resuming: %d of %d units already finished", len(done), len(plan.units))
    references = (None, None)  # the previous output's parity and probe references (recheck.py)
    if plan.previous is not None:
        kept = recheck.read_references(plan.previous, config)
        queries = recheck.read_references(plan.previous, config, recheck.QUERY_REFERENCES)
        references = (kept, queries)
    chosen = recheck.choose(plan.previous, references[0]) if plan.previous else None
    items = _work_items(config, plan, todo, chosen)
    clock.mark_planned()

    # [3] Stream the units through the stages.
    stats = list(done.values())
    # The gate's reference model loads in the background while the units run, not alone after
    # the last one (Ray's start-up before this is CPU-bound: loading it there slowed Ray down).
    reference = gate.start_reference(config, probe, plan.rows_in, *references) if items else None
    if items:  # Ray Data refuses an empty from_items; nothing left to do skips straight to [4]
        with pipeline.progress(config, plan, stats, actors) as progress:
            if actors.in_process:
                stats.extend(local.stream(config, plan, items, actors, progress, clock))
            else:
                ds = pipeline.dataset(config, plan, items, actors)
                stats.extend(pipeline.stream(config, ds, actors, progress, clock))
        pipeline.check_one_host(config, stats)
    clock.mark_embedded()
    nodes = _node_count()
    if not uses_ray(stats, config.target_part_mib):
        release_ray()  # the rest of the run needs no Ray: a CLI run's Ray stops meanwhile

    # [4] The quality gate on the staged units (refused: exit 3, OUTPUT's snapshot untouched),
    # then publish the parts, then the manifest, last: its presence means the run finished.
    rows_now = sum(u.length for u in todo)
    manifest = manifests.build(config, plan.model, stats, plan.rows_in, rows_now, clock)
    rechecked = None
    if chosen is not None:
        rechecked = recheck.fresh_vectors(plan.out_fs, plan.output, stats, chosen)
    manifest["gate"], queries = gate.check(
        config, plan, stats, probe, reference, rechecked, references
    )
    clock.mark("gate_checked")
    manifest.update(publish(plan.out_fs, plan.output, stats, config.target_part_mib))
    clock.mark("published")
    release_ray()  # if the parts were written by Ray tasks, only now
    manifest["run_digest"] = plan.fingerprint["digest"]
    manifest["units"] = {"total": len(plan.units), "resumed": len(done), "done_now": len(todo)}
    if actors is not None:
        manifest["runner"] = "local" if actors.in_process else "ray"
    if plan.previous is not None:
        manifest["incremental"] = manifests.delta_counts(plan.previous, stats)
        manifest["drift"] = drift.report(
            config, plan, manifest, (rechecked, probe, queries), actors, side
        )
        clock.mark("drift_reported")
    manifest["ledger"] = _ledger(config, stats, clock, actors, nodes)
    manifest["timeline"] = clock.timeline()
    write_json_atomic(plan.out_fs, manifest, posixpath.join(plan.output, MANIFEST))
    plan.run_state.end_publish()
    # [5] The sink (--sink), after the commit: the Parquet output is the source of truth.
    return sink.sync(plan, manifest) if sink else manifest


def _node_count() -> int:
    """The cluster's alive nodes now (1 when this run never started Ray: nothing was left to do)."""
    import ray

    return len(alive_nodes()) if ray.is_initialized() else 1


def _ledger(config: EmbedConfig, stats: list[dict], clock, actors: PoolSize | None, nodes: int):
    """The manifest's cost and throughput ledger (embed/ledger.py), over the whole run so far."""
    wall, embed = time.perf_counter() - clock.t0, clock.t_embed - clock.t_plan
    return ledger.build(stats, wall, embed, actors, nodes, config.price_per_hour)


def _start_actors(config: EmbedConfig, plan: Plan, runner: str) -> PoolSize:
    """Ray's runner: join or start Ray, refuse local paths the nodes do not share, size the actor
    pool for the alive nodes. Either runner: refuse fp16 on CPU; export an ONNX backend once
    here, not raced by every actor. Runs before the first write."""
    if runner == "local":
        actors = local.pool(config)
    else:
        init_ray()
        nodes = alive_nodes()
        paths = {"--input": config.input, "--output": config.output, "--previous": config.previous}
        check_shared_storage(paths, config.shared_fs, nodes)
        actors = size_pool(nodes, config)
    gpus = actors.gpus
    if config.precision == "fp16" and gpus == 0:
        raise InputError("--precision fp16 needs GPU actors; use fp32 or bf16 on CPU")
    chosen = resolve(config.backend, cuda=gpus > 0, precision=config.precision)
    if backend(chosen).onnx and gpus == 0:
        from fashion_batch.encoders.export import prepare
        from fashion_batch.runtime.ray import quiet_model_loading

        quiet_model_loading()  # a first export loads the model: no bar (the model is named once)
        prepare(plan.model["path"], chosen)
    return actors


def _work_items(config: EmbedConfig, plan: Plan, todo: list, chosen) -> list[dict]:
    """One dict per unit to do; with --previous, each carries its plan_carry entry."""
    items = [unit_dict(u) for u in todo]
    if plan.previous is not None:
        again = chosen.column("id").combine_chunks() if chosen is not None else None
        plans = plan_carry(plan.in_fs, todo, config.id_column, plan.previous, again)
        for item in items:
            item["carry"] = plans.get(item["index"])
    return items
