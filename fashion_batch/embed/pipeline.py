"""The embed job's Ray Data pipeline (embed/job.py runs it): the units as a Dataset through
PrepareUnits → EmbedUnits (the actor pool) → WriteUnits, streamed back as one statistics row per
unit, with the run's progress line, the stall error and the one-host check over what came back.
`stages` builds the three callables, which the in-process runner (embed/local.py) runs too."""

from __future__ import annotations

from fashion_batch.embed import manifest as manifests
from fashion_batch.embed.actors import PoolSize, actor_options
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.encode import EmbedUnits
from fashion_batch.embed.plan import Plan
from fashion_batch.embed.stages import PrepareUnits
from fashion_batch.embed.write import WriteUnits
from fashion_batch.io.fs import redact
from fashion_batch.runtime.nodes import alive_nodes, describe, is_local
from fashion_batch.runtime.progress import Progress
from fashion_batch.runtime.ray import quiet_ray_data


def stream(
    config: EmbedConfig, ds, actors: PoolSize, progress: Progress, clock: manifests.Clock
) -> list[dict]:
    """Run the pipeline; return the writers' statistics rows, one per unit, counting each
    unit's listings into `progress` as it arrives (Ray Data's own progress is off: quiet_ray_data).

    Stall detection is Ray Data's own no-progress guard (no block entered or left any stage's
    queue and no output was taken), armed with `--stall-timeout`; this turns its timeout into
    an error that says what the pool asked for and what the cluster has, which is what an
    on-call engineer needs to tell a starved pool from an infeasible request."""
    import ray
    from ray.data.exceptions import ExecutionTimeoutError

    ds.context.execution_no_progress_timeout_s = config.stall_timeout
    quiet_ray_data(ds.context)
    stats = []
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            clock.mark("first_unit")
            stats.extend(rows)
            progress.advance(listings(rows))
    except ExecutionTimeoutError as e:
        available = {k: round(v, 4) for k, v in ray.available_resources().items() if k in _SHOWN}
        stages = [line.strip() for line in str(e).splitlines() if line.strip().startswith("- ")]
        raise StallError(
            f"no progress for {config.stall_timeout:g}s (--stall-timeout), {len(stats)} unit(s) "
            f"finished: the actor pool asks for {actors.describe()} and each prepare/write "
            f"task for 1 CPU; the cluster has {describe(alive_nodes())}, available now: "
            f"{available or 'nothing'}. Stages still running: {'; '.join(stages) or 'none'}. "
            "Lower --gpus-per-actor/--cpus-per-actor/--num-actors, or add nodes."
        ) from None
    return stats


def listings(stats: list[dict]) -> int:
    """Input rows the units of these statistics rows covered (embedded or quarantined)."""
    return sum(s["rows_out"] + s["rows_quarantined"] for s in stats)


def progress(config: EmbedConfig, plan: Plan, resumed: list[dict], actors: PoolSize) -> Progress:
    """The run's progress in listings, opened with the one line that names the model and the
    actor pool (each actor loads the model quietly: runtime.ray.quiet_model_loading)."""
    model = f"{redact(config.model)} (sha256 {plan.model['sha256'][:12]})"
    title = (
        f"embed: {plan.rows_in:,} listings in {len(plan.units)} unit(s), model {model}, "
        f"backend {config.backend}, {actors.describe()}"
    )
    return Progress(plan.rows_in, listings(resumed), title=title)


_SHOWN = ("CPU", "GPU")  # of ray.available_resources(): what a pool or a task waits for


class StallError(RuntimeError):
    """The run made no progress for --stall-timeout seconds (exit 1, like any failure)."""


def check_one_host(config: EmbedConfig, stats: list[dict]) -> None:
    """A local OUTPUT written from more than one host is scattered over their disks: fail before
    the manifest says it finished. `check_shared_storage` refuses such a run up front; this
    catches nodes on other hosts that joined after it (an autoscaler's), over the units this
    invocation wrote (commit records do not say where a unit ran)."""
    hosts = sorted({s["host"] for s in stats if s.get("host")})
    if len(hosts) > 1 and is_local(config.output) and not config.shared_fs:
        raise RuntimeError(
            f"--output {config.output}: parts were written on {len(hosts)} hosts "
            f"({', '.join(hosts)}), each to its own disk; no manifest written. Use an s3:// "
            "output, or --shared-fs if the path is on storage every node mounts"
        )


def stages(config: EmbedConfig, plan: Plan, threads: int) -> tuple:
    """(prepare, embed_args, write): the stage callables both runners use, and EmbedUnits'
    arguments (each Ray actor, or the local runner, loads its model from them)."""
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
        config.fix_template,
        config.fix_invalid_utf8,
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
    return prepare, embed_args, write


def dataset(config: EmbedConfig, plan: Plan, items: list[dict], actors: PoolSize):
    """The Ray Data pipeline: units → PrepareUnits → EmbedUnits (actor pool) → WriteUnits."""
    import ray

    strategy, gpus, cpus = actors.strategy(), actors.gpus, actors.cpus
    prepare, embed_args, write = stages(config, plan, actors.threads)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # CPU actors: prepare asks for the actors' CPUs, so Ray Data fuses it into the actor (one
    # process fewer per task, no object-store hop for the prepared rows); the same cores do the
    # work either way. GPU actors: prepare stays in CPU tasks, so a GPU never waits on cleaning.
    fuse = {"num_cpus": cpus, **actor_options()} if not gpus else {}
    ds = ds.map_batches(prepare, batch_size=1, batch_format="pyarrow", **fuse)
    ds = ds.map_batches(
        EmbedUnits,
        fn_constructor_kwargs=embed_args,
        compute=strategy,
        num_gpus=gpus,
        num_cpus=cpus,
        batch_size=1,  # one unit (up to rows_per_unit texts); the model batches inside
        batch_format="pyarrow",
        **actor_options(),
    )
    return ds.map_batches(write, batch_size=1, batch_format="pyarrow")
