"""The embed job: Parquet listings → Ray Data → sentence-transformers actors → Parquet embeddings.

The pipeline is four small stages, each a callable over a `pa.Table` that can be unit-tested by
calling it on a five-row table without Ray; `run()` only wires them into Ray Data:

    units (one row per planned row range, catalog.plan_units)
      → ReadUnits    (CPU tasks)   read the row range, projected to id + template columns
      → PrepareText  (CPU tasks)   render + clean text, mark quarantined rows with a reason
      → Embed        (actors)      model loaded once per actor, GPU when present; encodes ok rows
      → WriteUnits   (CPU tasks)   one part file per unit (+ its quarantine rows), atomically
    manifest.json last, from the per-unit statistics the writers return.

Every block that reaches `Embed` and `WriteUnits` is one whole unit (one block per unit from the
start, `batch_size=None` after), which `WriteUnits` checks row-for-row before it writes.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from fashion_batch import catalog
from fashion_batch.catalog import DUPLICATE_ID, EMPTY_TEXT, MISSING_ID, InputError
from fashion_batch.text import Template

log = logging.getLogger(__name__)

UNIT = "__unit"
ROW = "__row"  # row index within the input file
TEXT = "__text"  # cleaned text, what the model sees
RAW = "__raw"  # template rendered from uncleaned fields; kept for quarantined rows only
REASON = "__reason"  # null = embed this row


@dataclass
class EmbedConfig:
    """Settings of one embed run; the CLI and jobs/embed_catalog.py build it and nothing else."""

    input: str
    output: str
    model: str = "builtin:minilm"
    id_column: str = "listing_id"
    text_template: str = "{title}. {description}"
    batch_size: int = 64  # texts per forward pass inside an actor
    num_actors: int | None = None  # fixed pool; default: from the cluster's resources
    min_actors: int | None = None  # autoscaling pool bounds (both or neither)
    max_actors: int | None = None
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    precision: str = "auto"  # auto = fp16 on CUDA, fp32 on CPU
    normalize: bool = False
    limit: int | None = None  # embed only the first N rows (in file, row order)
    overwrite: bool = False  # replace a finished output
    rows_per_unit: int = 4096  # rows per output part file
    extra: dict = field(default_factory=dict)  # recorded in the manifest (e.g. the command line)

    def __post_init__(self):
        def positive(name: str, value, allow_none: bool = True):
            if value is None and allow_none:
                return
            if value is None or value <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")

        for name in ("batch_size", "rows_per_unit", "cpus_per_actor"):
            positive(name, getattr(self, name), allow_none=False)
        for name in ("num_actors", "min_actors", "max_actors", "limit"):
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
        try:
            self.template = Template(self.text_template)
        except ValueError as e:
            raise InputError(str(e)) from e


# ------------------------------------------------------------------------------ stages


class ReadUnits:
    """Read the row range of each unit in the batch, projected to the columns the job needs.

    Args:
        filesystem: the input filesystem (pyarrow filesystems pickle, S3 included).
        columns: id column + template columns.
    """

    def __init__(self, filesystem: pafs.FileSystem, columns: list[str]):
        self.fs = filesystem
        self.columns = columns

    def __call__(self, units: pa.Table) -> pa.Table:
        tables = []
        for u in units.to_pylist():
            unit = catalog.Unit(**u)
            t = catalog.read_unit(self.fs, unit, self.columns)
            t = t.append_column(UNIT, pa.array(np.full(len(t), unit.index, dtype=np.int32)))
            rows = np.arange(unit.file_row, unit.file_row + len(t), dtype=np.int64)
            t = t.append_column(ROW, pa.array(rows))
            tables.append(t.append_column("__path", pa.array([unit.path] * len(t), pa.string())))
        return pa.concat_tables(tables)


class PrepareText:
    """Render and clean each row's text and decide whether it is embedded or quarantined.

    Args:
        template: the text template ("{title}. {description}").
        id_column: the id column.
        duplicate_rows: {input file: sorted row indices} of rows whose id occurred earlier
            (catalog.find_duplicate_rows); they are quarantined as duplicate_id.
    """

    def __init__(self, template: str, id_column: str, duplicate_rows: dict | None = None):
        self.template = Template(template)
        self.id_column = id_column
        self.duplicate_rows = duplicate_rows or {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = len(batch)
        columns = batch.select(self.template.columns).to_pydict()
        texts = self.template.render_columns(columns, n)
        raw = self.template.render_columns(columns, n, clean=False)
        reasons: list[str | None] = [None] * n
        duplicated = self._duplicated(batch)
        ids_null = batch.column(self.id_column).is_null().to_pylist()
        for i in range(n):
            if ids_null[i]:
                reasons[i] = MISSING_ID
            elif duplicated[i]:
                reasons[i] = DUPLICATE_ID
            elif not texts[i]:
                reasons[i] = EMPTY_TEXT
        keep_raw = [r if reason else None for r, reason in zip(raw, reasons, strict=True)]
        out = batch.select([self.id_column, UNIT])
        out = out.append_column(TEXT, pa.array(texts, pa.string()))
        out = out.append_column(RAW, pa.array(keep_raw, pa.string()))
        return out.append_column(REASON, pa.array(reasons, pa.string()))

    def _duplicated(self, batch: pa.Table) -> np.ndarray:
        flags = np.zeros(len(batch), dtype=bool)
        if not self.duplicate_rows or "__path" not in batch.column_names:
            return flags
        paths = batch.column("__path").to_numpy(zero_copy_only=False)
        rows = batch.column(ROW).to_numpy()
        for path in np.unique(paths):
            dup = self.duplicate_rows.get(path)
            if dup is not None:
                mine = paths == path
                flags[mine] = np.isin(rows[mine], dup)
        return flags


class Embed:
    """Encode the batch's non-quarantined rows; the model is loaded once, in `__init__`.

    Returns the batch without the text column and with `embedding`, a
    `fixed_size_list<float32>[D]` built here (a 2-D numpy return would become Ray's tensor
    extension type, which Polars and DuckDB read badly). Quarantined rows get a null embedding.

    Args:
        model: a `--model` value, resolved on the actor's node.
        batch_size: texts per forward pass.
        precision: auto | fp32 | fp16 | bf16.
        normalize: L2-normalize the embeddings.
        threads: torch intra-op threads (a CPU actor must not take every core: reads starve).
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 64,
        precision: str = "auto",
        normalize: bool = False,
        threads: int | None = None,
    ):
        import torch

        from fashion_batch.encoder import Encoder, load_model, pick_device

        if threads:
            torch.set_num_threads(threads)
        device = pick_device()
        if device == "cpu" and _assigned_gpus():
            log.warning("actor was given a GPU but CUDA is unavailable; running on CPU")
        self.encoder = Encoder(load_model(model, device, precision), batch_size, normalize)
        self.dim = self.encoder.dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pc.is_null(batch.column(REASON)).to_numpy(zero_copy_only=False)
        texts = batch.column(TEXT).to_pylist()
        vectors = np.zeros((len(batch), self.dim), dtype=np.float32)  # (n, D)
        idx = np.flatnonzero(ok)
        if len(idx):
            vectors[idx] = self.encoder.encode([texts[i] for i in idx])  # (n_ok, D)
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), self.dim, mask=pa.array(~ok)
        )
        return batch.drop_columns([TEXT]).append_column("embedding", embedding)


def _assigned_gpus() -> list:
    try:
        import ray

        return ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # outside a Ray worker
        return []


class WriteUnits:
    """Write each unit's rows: `part-NNNNN.parquet` and, if any, `quarantine/part-NNNNN.parquet`.

    Returns one statistics row per unit. A unit whose row count is not what the planner said
    raises instead of writing, so a scheduling surprise can never produce a short file.

    Args:
        filesystem, output: where to write.
        id_column: the id column name.
        unit_rows: {unit index: planned row count}.
        metadata: Parquet schema metadata for the part files (model, normalized).
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        output: str,
        id_column: str,
        unit_rows: dict[int, int],
        metadata: dict[str, str],
    ):
        self.fs = filesystem
        self.output = output
        self.id_column = id_column
        self.unit_rows = unit_rows
        self.metadata = metadata

    def __call__(self, batch: pa.Table) -> pa.Table:
        stats = []
        units = batch.column(UNIT).to_numpy()
        for unit in np.unique(units):
            stats.append(self._write(int(unit), batch.filter(pa.array(units == unit))))
        return pa.Table.from_pylist(stats)

    def _write(self, unit: int, rows: pa.Table) -> dict:
        if len(rows) != self.unit_rows[unit]:
            raise RuntimeError(f"unit {unit}: got {len(rows)} rows, planned {self.unit_rows[unit]}")
        name = catalog.Unit(unit, "", 0, 0, 0, 0).name
        id_field = rows.schema.field(self.id_column)
        reason = rows.column(REASON)
        good = rows.filter(pc.is_null(reason))
        dim = rows.schema.field("embedding").type.list_size
        meta = {**self.metadata, "dim": str(dim)}
        schema = catalog.output_schema(id_field, dim, meta)
        part = pa.table([good.column(self.id_column), good.column("embedding")], schema=schema)
        catalog.write_atomic(self.fs, part, posixpath.join(self.output, name))
        bad = rows.filter(pc.is_valid(reason))
        files = [name]
        if len(bad):
            qname = posixpath.join(catalog.QUARANTINE_DIR, name)
            q = pa.table(
                [bad.column(self.id_column), bad.column(REASON), bad.column(RAW)],
                schema=catalog.quarantine_schema(id_field),
            )
            catalog.write_atomic(self.fs, q, posixpath.join(self.output, qname))
            files.append(qname)
        counts = {r: 0 for r in catalog.REASONS}
        for r in bad.column(REASON).to_pylist():
            counts[r] = counts.get(r, 0) + 1
        return {
            "unit": unit,
            "rows_out": len(part),
            "rows_quarantined": len(bad),
            "dim": dim,
            "files": files,
            **{f"q_{k}": v for k, v in counts.items()},
        }


# ------------------------------------------------------------------------------ wiring


def init_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (`ray job submit` sets it), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto")
    else:
        ray.init()


def _actor_settings(config: EmbedConfig) -> tuple[object, float, float, int]:
    """(ActorPoolStrategy, num_gpus, num_cpus, torch threads) from flags and cluster resources.

    Defaults: one actor per GPU when the cluster has GPUs; on a CPU-only cluster, as many
    single-CPU actors as leave one CPU free for the read/prepare/write tasks (design.md pitfall:
    an actor that takes every CPU starves the reads and the job hangs).
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
    else:
        if gpus > 0:
            size = max(1, int(cluster_gpus / gpus))
        else:
            size = max(1, int((cluster_cpus - 1) / cpus))
        strategy = ray.data.ActorPoolStrategy(size=size)
    threads = max(1, int(cpus))
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
    in_fs, files = catalog.list_input_files(config.input)
    columns = list(dict.fromkeys([config.id_column, *config.template.columns]))
    units, _, rows_in = catalog.plan_units(
        in_fs, files, config.id_column, columns[1:], config.rows_per_unit
    )
    if config.limit is not None:
        units, rows_in = _limit(units, config.limit)
    out_fs, output = catalog.filesystem(config.output)
    previous = catalog.read_manifest(out_fs, output)
    if previous is not None and not config.overwrite:
        log.warning("%s is a finished output (manifest.json); --overwrite replaces it", output)
        return previous
    duplicates = catalog.find_duplicate_rows(
        in_fs, sorted({u.path for u in units}), config.id_column
    )
    t_plan = time.perf_counter()

    # [2] Wire the stages into Ray Data and stream the units through them.
    catalog.clear_output(out_fs, output)
    init_ray()
    strategy, gpus, cpus, threads = _actor_settings(config)
    if config.precision == "fp16" and gpus == 0:
        raise InputError("--precision fp16 needs GPU actors; use fp32 or bf16 on CPU")
    metadata = {
        "model": config.model,
        "normalized": str(config.normalize).lower(),
        "text_template": config.text_template,
    }
    ds = ray.data.from_items([catalog.unit_dict(u) for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(ReadUnits(in_fs, columns), batch_size=1, batch_format="pyarrow")
    ds = ds.map_batches(
        PrepareText(config.text_template, config.id_column, duplicates),
        batch_size=None,
        batch_format="pyarrow",
    )
    ds = ds.map_batches(
        Embed,
        fn_constructor_kwargs={
            "model": config.model,
            "batch_size": config.batch_size,
            "precision": config.precision,
            "normalize": config.normalize,
            "threads": threads,
        },
        compute=strategy,
        num_gpus=gpus,
        num_cpus=cpus,
        batch_size=None,
        batch_format="pyarrow",
    )
    ds = ds.map_batches(
        WriteUnits(out_fs, output, config.id_column, {u.index: u.length for u in units}, metadata),
        batch_size=None,
        batch_format="pyarrow",
    )
    stats = (
        [
            row
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow")
            for row in batch.to_pylist()
        ]
        if units
        else []
    )
    t_embed = time.perf_counter()

    # [3] The manifest, last: its presence means the run finished.
    manifest = _manifest(config, model_dir, stats, rows_in, started, t0, t_plan, t_embed)
    manifest["software"] = _software()
    catalog.write_json_atomic(out_fs, manifest, posixpath.join(output, catalog.MANIFEST))
    return manifest


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
    from fashion_batch.encoder import weights_digest

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
        lines.append("stages       " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    return "\n".join(lines)
