"""The embed job: Parquet listings → Ray Data → sentence-transformers actors → Parquet embeddings.

`run()` only checks the input, plans the work units and wires the stages (fashion_batch.stages)
into Ray Data:

    units (one row per planned row range, catalog.plan_units)
      → PrepareUnits (CPU tasks) → EmbedUnits (actor pool, GPU when present) → WriteUnits (tasks)
    manifest.json last, from the per-unit statistics the writers return.

Reliability (README "Guarantees"): each unit is committed on its own (state.py), so a re-run of a
killed run's command does only the units that were not committed; `--previous` carries last
night's embeddings of unchanged rows over (incremental.py); lost actors and tasks are retried by
Ray (`_actor_fault_tolerance`).

Launch: `fashion-batch embed --input ... --output ...` locally (an implicit local Ray), or on a
cluster `ray job submit --working-dir . -- python jobs/embed_catalog.py --input s3://... ...`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from dataclasses import dataclass, field

from fashion_batch import catalog, state
from fashion_batch.catalog import InputError
from fashion_batch.encoder import check_safetensors_only, weights_digest
from fashion_batch.incremental import load_previous, plan_carry
from fashion_batch.stages import EmbedUnits, PrepareUnits, WriteUnits
from fashion_batch.text import Template

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    """Settings of one embed run; the CLI and jobs/embed_catalog.py build it and nothing else."""

    input: str
    output: str
    model: str = "builtin:minilm"
    id_column: str = "listing_id"
    text_template: str = "{title}. {description}"
    batch_size: int | None = None  # texts per forward pass; None: 16 on CPU, 256 on a GPU
    num_actors: int | None = None  # fixed pool; default: from the cluster's resources
    min_actors: int | None = None  # autoscaling pool bounds (both or neither)
    max_actors: int | None = None
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float | None = None  # Ray CPUs reserved per actor; default: _actor_settings
    threads_per_actor: int | None = None  # torch / ORT threads; default: see _actor_settings
    precision: str = "auto"  # auto = fp16 on CUDA, fp32 on CPU
    backend: str = "torch"  # torch | onnx | onnx-int8: CPU actors' runtime (backends.py)
    normalize: bool = False
    limit: int | None = None  # embed only the first N rows (in file, row order)
    overwrite: bool = False  # replace a finished output, or discard another run's unfinished one
    previous: str | None = None  # last night's output: embed only new/changed rows (incremental.py)
    rows_per_unit: int = 4096  # rows per output part file
    extra: dict = field(default_factory=dict)  # recorded in the manifest (e.g. the command line)

    def __post_init__(self):
        def positive(name: str, value, allow_none: bool = True):
            if value is None and allow_none:
                return
            if value is None or value <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")

        positive("rows_per_unit", self.rows_per_unit, allow_none=False)
        for name in (
            "cpus_per_actor",
            "batch_size",
            "num_actors",
            "min_actors",
            "max_actors",
            "limit",
            "threads_per_actor",
        ):
            positive(name, getattr(self, name))
        if (self.min_actors is None) != (self.max_actors is None):
            raise InputError("--min-actors and --max-actors go together")
        if self.num_actors is not None and self.min_actors is not None:
            raise InputError("use --num-actors or --min-actors/--max-actors, not both")
        if self.min_actors is not None and self.min_actors > self.max_actors:
            raise InputError("--min-actors must be <= --max-actors")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise InputError("--gpus-per-actor must be >= 0")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise InputError(f"--precision must be auto|fp32|fp16|bf16, got {self.precision!r}")
        if self.backend not in ("torch", "onnx", "onnx-int8"):
            raise InputError(f"--backend must be torch|onnx|onnx-int8, got {self.backend!r}")
        try:
            self.template = Template(self.text_template)
        except ValueError as e:
            raise InputError(str(e)) from e


# ------------------------------------------------------------------------------ wiring


def init_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (`ray job submit` sets it), else start a local one.

    The local one starts without the dashboard: with ray[default] installed it costs ~3 s and a
    process per run, and a one-shot CLI run exits before anyone could look at it (a cluster from
    `ray start --head` has one; point RAY_ADDRESS at it to watch a job)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto")
    else:
        ray.init(include_dashboard=False)


def _actor_settings(config: EmbedConfig) -> tuple[object, float, float, int]:
    """(ActorPoolStrategy, num_gpus, num_cpus, threads) from flags and cluster resources.

    Defaults: one actor per GPU (1 CPU each) when the cluster has GPUs. On a CPU-only cluster,
    one single-threaded actor per CPU, the actors together reserving all CPUs but one, so a
    logical CPU stays free for the read/prepare/write tasks (design.md pitfall: actors that take
    every CPU starve the reads and the job hangs). Preparing and writing a unit costs ~1% of
    embedding it, so that CPU does embedding work too.

    Why one thread per actor, not fewer actors with more threads: an intra-op thread pool waits
    at every op for its slowest thread, and on a small node any other process (Ray's raylet, the
    driver, a write task) descheduling one thread stalls them all. Measured on the 2-vCPU dev box
    (4000-listing bench catalog, `--backend onnx-int8`): 2 actors × 1 thread 243-300 rows/s in
    the embed stage against 175-270 for 1 × 2 threads, 23.5-31.5 s end to end against
    25.8-34.8 s; torch 132 against 117 rows/s (README Performance). A flag given wins: with
    `--num-actors N` on CPU the threads default to the cluster's CPUs shared among the N actors.
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


def _software() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in (
        "fashion-batch",
        "ray",
        "torch",
        "sentence-transformers",
        "transformers",
        "pyarrow",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "n/a"
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run(config: EmbedConfig) -> dict:
    """Run the embed job; return the manifest. Bad input raises InputError/ModelError before any
    file is written."""
    import ray

    from fashion_batch.encoder import resolve_model

    started, t0 = _now(), time.perf_counter()
    # [1] Check everything that can be wrong with the input before writing anything.
    model_dir = resolve_model(config.model)
    check_safetensors_only(model_dir)  # here, not first in the actors after the catalog is read
    in_fs, files = catalog.list_input_files(config.input)
    columns = list(dict.fromkeys([config.id_column, *config.template.columns]))
    units, id_type, rows_in = catalog.plan_units(
        in_fs, files, config.id_column, columns[1:], config.rows_per_unit
    )
    if config.limit is not None:
        units, rows_in = _limit(units, config.limit)
    out_fs, output = catalog.filesystem(config.output)
    catalog.check_output_location(out_fs, output, config.output)
    if config.previous is not None and catalog.filesystem(config.previous)[1] == output:
        raise InputError("--previous must be another output than --output (it is read)")
    finished = catalog.read_manifest(out_fs, output)
    if finished is not None and not config.overwrite:
        log.warning("%s is a finished output (manifest.json); --overwrite replaces it", output)
        return finished
    duplicates = catalog.find_duplicate_rows(
        in_fs, sorted({u.path for u in units}), config.id_column
    )
    model_sha = weights_digest(model_dir)
    settings = _fingerprint_settings(config)
    previous = None
    if config.previous is not None:
        previous = load_previous(config.previous, model_sha, settings, id_type)
    fp = state.fingerprint(
        in_fs, files, model_sha, settings, previous.identity if previous else None
    )
    run_state = state.RunState(out_fs, output)
    if finished is None:
        run_state.check(fp, config.overwrite)  # another run's unfinished output: exit 2 here
    init_ray()
    strategy, gpus, cpus, threads = _actor_settings(config)
    if config.precision == "fp16" and gpus == 0:
        raise InputError("--precision fp16 needs GPU actors; use fp32 or bf16 on CPU")
    if config.backend != "torch" and gpus == 0:  # export once here, not raced by every actor
        from fashion_batch.backends import prepare

        prepare(model_dir, config.backend)

    # [2] Resume or start: the first write of the run (state.py explains the commit log).
    if finished is not None:  # --overwrite of a finished output
        run_state.clear()
    done = run_state.start(fp, config.overwrite)
    todo = [u for u in units if u.index not in done]
    if done:
        log.warning("resuming: %d of %d units already finished", len(done), len(units))
    items = [catalog.unit_dict(u) for u in todo]
    if previous is not None:
        plans = plan_carry(in_fs, todo, config.id_column, previous)
        for item in items:
            item["carry"] = plans.get(item["index"])
    t_plan = time.perf_counter()

    # [3] Wire the stages into Ray Data and stream the units through them.
    metadata = {
        "model": config.model,
        "normalized": str(config.normalize).lower(),
        "text_template": config.text_template,
    }
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        PrepareUnits(
            in_fs,
            columns,
            config.text_template,
            config.id_column,
            duplicates,
            previous.stage_args() if previous else None,
        ),
        batch_size=1,
        batch_format="pyarrow",
    )
    ds = ds.map_batches(
        EmbedUnits,
        fn_constructor_kwargs={
            "model": config.model,
            "batch_size": config.batch_size,
            "precision": config.precision,
            "normalize": config.normalize,
            "threads": threads,
            "backend": config.backend,
        },
        compute=strategy,
        num_gpus=gpus,
        num_cpus=cpus,
        batch_size=1,  # one unit (up to rows_per_unit texts); the model batches inside
        batch_format="pyarrow",
        **_actor_fault_tolerance(),
    )
    ds = ds.map_batches(
        WriteUnits(out_fs, output, config.id_column, {u.index: u.length for u in units}, metadata),
        batch_size=1,
        batch_format="pyarrow",
    )
    stats = list(done.values())
    if items:  # Ray Data refuses an empty from_items; nothing left to do skips straight to [4]
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            stats.extend(batch.to_pylist())
    t_embed = time.perf_counter()

    # [4] The manifest, last: its presence means the run finished.
    manifest = _manifest(config, model_dir, stats, rows_in, started, t0, t_plan, t_embed)
    manifest["run_digest"] = fp["digest"]
    manifest["units"] = {"total": len(units), "resumed": len(done), "done_now": len(todo)}
    rows_now = sum(u.length for u in todo)
    elapsed = time.perf_counter() - t0
    manifest["rows_per_s"] = round(rows_now / elapsed, 2) if elapsed > 0 else None
    manifest["stage_rows_per_s"] = _stage_rates(manifest["stage_seconds"], rows_in, rows_now)
    if previous is not None:
        manifest["incremental"] = _delta_counts(previous, stats)
    manifest["software"] = _software()
    run_state.remove_strays(manifest["files"])
    catalog.write_json_atomic(out_fs, manifest, posixpath.join(output, catalog.MANIFEST))
    return manifest


# EmbedConfig fields that only schedule the work: they may change between a crash and the re-run
# that resumes it. Every other field (a new one included, until it is listed here) is part of the
# run's fingerprint, because it may decide which rows land where or what their embeddings are.
_SCHEDULING_ONLY = {
    "input",  # the input files themselves are fingerprinted (path, size, mtime)
    "output",
    "batch_size",
    "num_actors",
    "min_actors",
    "max_actors",
    "gpus_per_actor",
    "cpus_per_actor",
    "threads_per_actor",
    "overwrite",
    "extra",
}


def _fingerprint_settings(config: EmbedConfig) -> dict:
    """The settings that decide which rows land in which file and what their embeddings are."""
    from dataclasses import fields

    return {
        f.name: getattr(config, f.name) for f in fields(config) if f.name not in _SCHEDULING_ONLY
    }


def _actor_fault_tolerance() -> dict:
    """Ray options of the embedding actors, set here rather than left to Ray Data's defaults.

    A dead actor (its node lost, OOM-killed) is restarted without limit, and the unit it was
    embedding is retried without limit on the restarted one. A bound on the retries looks safer
    but is not: when a node dies, Ray spends a bounded retry on every failed call to the
    unreachable actor until the cluster declares the node dead (~15-30 s), so 3 retries failed the
    whole job in tests/test_faults.py. The price: a unit whose rows crash the actor process every
    time would be retried forever (none is known: tokenizer errors raise, they don't crash). Units
    are written whole and idempotently, so a retried unit is never half-written or duplicated.
    FASHION_BATCH_FAULT_* variables (test hooks, stages._fault_hook) are forwarded to the actors.

    The prepare and write tasks keep Ray Data's own default (2.60: `max_retries=-1` for system
    failures such as a lost node or worker; an exception raised by our code is not retried).
    Ray 2.60 deprecates passing these options through `map_batches` (removal announced for
    2.64, which constraints.txt does not allow); tests/test_faults.py checks the job survives.
    """
    args = {"max_restarts": -1, "max_task_retries": -1}
    faults = {k: v for k, v in os.environ.items() if k.startswith("FASHION_BATCH_FAULT_")}
    if faults:
        args["runtime_env"] = {"env_vars": faults}
    return args


def _delta_counts(previous, stats: list[dict]) -> dict:
    counts = {k: sum(s.get(f"d_{k}", 0) for s in stats) for k in ("new", "changed", "unchanged")}
    counts["removed"] = previous.manifest["rows_out"] - counts["changed"] - counts["unchanged"]
    return {"previous": previous.uri, **counts}


def _limit(units: list[catalog.Unit], limit: int) -> tuple[list[catalog.Unit], int]:
    kept, total = [], 0
    for u in units:
        if total >= limit:
            break
        take = min(u.length, limit - total)
        kept.append(catalog.Unit(u.index, u.path, u.row_group, u.offset, take, u.file_row))
        total += take
    return kept, total


def _manifest(config, model_dir, stats, rows_in, started, t0, t_plan, t_embed) -> dict:
    stats = sorted(stats, key=lambda s: s["unit"])
    rows_out = sum(s["rows_out"] for s in stats)
    rows_q = sum(s["rows_quarantined"] for s in stats)
    if rows_out + rows_q != rows_in:
        raise RuntimeError(f"accounting: {rows_out} out + {rows_q} quarantined != {rows_in} in")
    dims = {s["dim"] for s in stats}
    if len(dims) > 1:
        raise RuntimeError(f"actors disagree on the embedding dim: {sorted(dims)}")
    if dims:
        dim = dims.pop()
    else:  # empty input: ask the model itself
        from fashion_batch.encoder import load_model

        dim = int(load_model(config.model, "cpu").get_embedding_dimension())
    elapsed = time.perf_counter() - t0
    return {
        "model": {"name": config.model, "path": model_dir, "sha256": weights_digest(model_dir)},
        "dim": dim,
        "normalized": config.normalize,
        "input": config.input,
        "id_column": config.id_column,
        "text_template": config.text_template,
        "precision": config.precision,
        "backend": config.backend,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": rows_q,
        "quarantine_reasons": {r: sum(s.get(f"q_{r}", 0) for s in stats) for r in catalog.REASONS},
        "files": [f for s in stats for f in s["files"]],
        "started_at": started,
        "finished_at": _now(),
        "rows_per_s": round(rows_in / elapsed, 2) if elapsed > 0 else None,
        "stage_seconds": {
            "plan": round(t_plan - t0, 3),
            "embed_and_write": round(t_embed - t_plan, 3),
        },
        **({"extra": config.extra} if config.extra else {}),
    }


def _stage_rates(stage_seconds: dict, rows_planned: int, rows_embedded: int) -> dict:
    """Rows per second of each stage: planning covers every input row, embed_and_write only the
    rows of the units this run did (a resumed run skips the finished ones)."""
    rows = {"plan": rows_planned, "embed_and_write": rows_embedded}
    return {
        k: round(rows[k] / v, 2) if v > 0 and k in rows else None for k, v in stage_seconds.items()
    }


def summary(manifest: dict) -> str:
    """The one-screen report `embed` prints at the end."""
    q = ", ".join(f"{k}={v}" for k, v in manifest.get("quarantine_reasons", {}).items() if v)
    lines = [
        f"model        {manifest['model']['name']}  (dim {manifest['dim']}, "
        f"normalized {str(manifest['normalized']).lower()})",
        f"rows in      {manifest['rows_in']}",
        f"rows out     {manifest['rows_out']}",
        f"quarantined  {manifest['rows_quarantined']}" + (f"  ({q})" if q else ""),
        f"files        {len(manifest['files'])}",
        f"throughput   {manifest['rows_per_s']} rows/s  "
        f"({manifest['started_at']} → {manifest['finished_at']})",
    ]
    stages = manifest.get("stage_seconds", {})
    if stages:
        rates = manifest.get("stage_rows_per_s", {})
        lines.append(
            "stages       "
            + ", ".join(
                f"{k} {v:.1f}s" + (f" ({rates[k]} rows/s)" if rates.get(k) else "")
                for k, v in stages.items()
            )
        )
    return "\n".join(lines)
