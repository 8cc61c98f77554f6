"""The embed job: Parquet listings → Ray Data → sentence-transformers actors → Parquet embeddings.

    plan (driver: footers, schema, duplicates, fingerprint; nothing written)
      → units: one row per planned row range (plan.Unit)
      → PrepareUnits (CPU tasks) → EmbedUnits (actor pool, GPU when present) → WriteUnits (tasks)
      → manifest.json last, from the per-unit statistics the writers return.

Reliability (docs/guarantees.md): each unit is committed on its own (state.py), so a re-run of a
killed run's command does only the units that were not committed; `--previous` carries last
night's embeddings of unchanged rows over (incremental.py); lost actors and tasks are retried by
Ray (actors.fault_tolerance).

Launch: `fashion-batch embed --input ... --output ...` locally (an implicit local Ray), or on a
cluster `ray job submit --working-dir . -- python jobs/embed_catalog.py --input s3://... ...`.
"""

from __future__ import annotations

import logging
import posixpath

from fashion_batch.embed import manifest as manifests
from fashion_batch.embed.actors import actor_settings, fault_tolerance
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.incremental import plan_carry
from fashion_batch.embed.layout import MANIFEST
from fashion_batch.embed.plan import Plan, make_plan, unit_dict
from fashion_batch.embed.stages import EmbedUnits, PrepareUnits
from fashion_batch.embed.write import WriteUnits
from fashion_batch.encoders.registry import backend
from fashion_batch.errors import InputError
from fashion_batch.io.atomic import write_json_atomic
from fashion_batch.io.fs import redact
from fashion_batch.runtime.ray import init_ray

log = logging.getLogger(__name__)


def run(config: EmbedConfig) -> dict:
    """Run the embed job; return the manifest. Bad input raises InputError/ModelError before any
    file is written."""
    clock = manifests.Clock()
    # [1] Check everything that can be wrong with the input before writing anything.
    plan = make_plan(config)
    if plan.finished is not None and not config.overwrite:
        log.warning("%s is a finished output (manifest.json); --overwrite replaces it", plan.output)
        return plan.finished
    if not plan.units:
        log.warning("%s holds no rows: the output will be empty", redact(config.input))
    actors = _start_actors(config, plan) if plan.units else None

    # [2] Resume or start: the first write of the run (state.py explains the commit log).
    replace = plan.finished is not None  # --overwrite of a finished output
    done = plan.run_state.start(plan.fingerprint, config.overwrite, replace_finished=replace)
    todo = [u for u in plan.units if u.index not in done]
    if done:
        log.warning("resuming: %d of %d units already finished", len(done), len(plan.units))
    items = _work_items(config, plan, todo)
    clock.mark_planned()

    # [3] Stream the units through the stages.
    stats = list(done.values())
    if items:  # Ray Data refuses an empty from_items; nothing left to do skips straight to [4]
        for batch in _dataset(config, plan, items, actors).iter_batches(
            batch_size=None, batch_format="pyarrow"
        ):
            stats.extend(batch.to_pylist())
    clock.mark_embedded()

    # [4] The manifest, last: its presence means the run finished.
    rows_now = sum(u.length for u in todo)
    manifest = manifests.build(config, plan.model, stats, plan.rows_in, rows_now, clock)
    manifest["run_digest"] = plan.fingerprint["digest"]
    manifest["units"] = {"total": len(plan.units), "resumed": len(done), "done_now": len(todo)}
    if plan.previous is not None:
        manifest["incremental"] = manifests.delta_counts(plan.previous, stats)
    write_json_atomic(plan.out_fs, manifest, posixpath.join(plan.output, MANIFEST))
    return manifest


def _start_actors(config: EmbedConfig, plan: Plan) -> tuple:
    """Join or start Ray and size the actor pool; refuse fp16 on CPU actors; export an ONNX
    backend once here, not raced by every actor. Runs before the first write."""
    init_ray()
    actors = actor_settings(config)
    gpus = actors[1]
    if config.precision == "fp16" and gpus == 0:
        raise InputError("--precision fp16 needs GPU actors; use fp32 or bf16 on CPU")
    if backend(config.backend).onnx and gpus == 0:
        from fashion_batch.encoders.export import prepare

        prepare(plan.model["path"], config.backend)
    return actors


def _work_items(config: EmbedConfig, plan: Plan, todo: list) -> list[dict]:
    """One dict per unit to do; with --previous, each carries its plan_carry entry."""
    items = [unit_dict(u) for u in todo]
    if plan.previous is not None:
        plans = plan_carry(plan.in_fs, todo, config.id_column, plan.previous)
        for item in items:
            item["carry"] = plans.get(item["index"])
    return items


def _dataset(config: EmbedConfig, plan: Plan, items: list[dict], actors: tuple):
    """The Ray Data pipeline: units → PrepareUnits → EmbedUnits (actor pool) → WriteUnits."""
    import ray

    strategy, gpus, cpus, threads = actors
    metadata = {
        "model": config.model,
        "normalized": str(config.normalize).lower(),
        "text_template": config.text_template,
    }
    previous = plan.previous.stage_args() if plan.previous else None
    prepare = PrepareUnits(
        plan.in_fs,
        config.columns,
        config.text_template,
        config.id_column,
        plan.duplicates,
        previous,
    )
    embed_args = {
        "model": config.model,
        "batch_size": config.batch_size,
        "precision": config.precision,
        "normalize": config.normalize,
        "threads": threads,
        "backend": config.backend,
    }
    unit_rows = {u.index: u.length for u in plan.units}
    write = WriteUnits(
        plan.out_fs, plan.output, config.id_column, unit_rows, metadata, plan.fingerprint["digest"]
    )
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(prepare, batch_size=1, batch_format="pyarrow")
    ds = ds.map_batches(
        EmbedUnits,
        fn_constructor_kwargs=embed_args,
        compute=strategy,
        num_gpus=gpus,
        num_cpus=cpus,
        batch_size=1,  # one unit (up to rows_per_unit texts); the model batches inside
        batch_format="pyarrow",
        **fault_tolerance(),
    )
    return ds.map_batches(write, batch_size=1, batch_format="pyarrow")
