"""EmbedConfig: every setting of an embed run, the one source the CLI, jobs/embed_catalog.py and
the Python API are built from (fashion_batch.options)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from fashion_batch.encoders.registry import (
    BACKENDS,
    BACKENDS_HELP,
    CPU_BATCH_SIZE,
    GPU_BATCH_SIZE,
    PRECISIONS,
)
from fashion_batch.errors import InputError
from fashion_batch.io.fs import redact
from fashion_batch.options import option
from fashion_batch.text import Template

RUNNERS = ("auto", "ray", "local")
# Settings that only an actor pool has: given, `--runner auto` runs on Ray (embed/local.py).
POOL_FLAGS = ("num_actors", "min_actors", "max_actors", "gpus_per_actor", "cpus_per_actor")


@dataclass
class EmbedConfig:
    """Settings of one embed run; the CLI and jobs/embed_catalog.py build it and nothing else."""

    input: str = option(help="Parquet file, directory or glob; local or s3://")
    output: str = option(help="output directory; local or s3://")
    model: str = option("builtin:minilm", help="model dir, hub id or builtin:minilm")
    id_column: str = option("listing_id", help="the listing id column")
    text_template: str = option(
        "{title}. {description}", help="how a listing's text is composed from its columns"
    )
    fix_template: str | None = option(
        None,
        metavar="TEMPLATE",
        help="rows the --text-template quarantines as empty_text or template_error get their "
        "text from this template instead; a row it fails too stays quarantined with its reason "
        "(docs/quarantine.md)",
    )
    fix_invalid_utf8: bool = option(
        False,
        help="embed rows whose template columns hold bytes that are not UTF-8, each bad byte "
        "shown as U+FFFD, instead of quarantining them as invalid_utf8",
    )
    batch_size: int | None = option(
        None,
        help=f"texts per forward pass (default: {CPU_BATCH_SIZE} on CPU, {GPU_BATCH_SIZE} on GPU)",
    )
    num_actors: int | None = option(
        None, help="fixed actor pool size (default: one per GPU, or one per CPU without GPUs)"
    )
    min_actors: int | None = option(None, help="autoscaling pool: lower bound")
    max_actors: int | None = option(None, help="autoscaling pool: upper bound")
    gpus_per_actor: float | None = option(
        None, help="GPUs per actor (default: 1 if the cluster has GPUs, else 0)"
    )
    cpus_per_actor: float | None = option(
        None,
        help="Ray CPUs reserved per actor (default: 1 per GPU actor; CPU actors: the largest "
        "share <= 1 that leaves every placement a node with a CPU for the tasks)",
    )
    threads_per_actor: int | None = option(
        None, help="torch / ONNX Runtime threads (default: CPUs/actors: 1 with the default pool)"
    )
    precision: str = option("auto", choices=PRECISIONS, help="auto = fp16 on CUDA, fp32 on CPU")
    backend: str = option(
        "auto",
        choices=BACKENDS,
        help=f"the encoder runtime ({BACKENDS_HELP})",
    )
    runner: str = option(
        "auto",
        choices=RUNNERS,
        help="where the stages run: ray (Ray Data and an actor pool: a cluster, GPUs), local (this "
        "process, one model using the machine's cores), auto (local on a machine of at most 4 "
        "CPUs with no GPU, no Ray to join and no actor-pool flag, else ray; docs/architecture.md)",
    )
    normalize: bool = option(False, help="L2-normalize embeddings")
    limit: int | None = option(None, help="embed only the first N rows (in file, row order)")
    overwrite: bool = option(
        False, help="replace a finished output, or discard an unfinished one from other settings"
    )
    previous: str | None = option(
        None,
        metavar="URI",
        help="last night's output: embed only new or changed listings, carry the rest over",
    )
    rows_per_unit: int = option(
        4096,
        help="most rows per unit of work: what an actor embeds at once and what a killed run "
        "resumes from (a small input is cut into at least 16 units of at least 256 rows, so "
        "every actor gets work)",
    )
    target_part_mib: float = option(
        128.0,
        metavar="MIB",
        help="published part files hold consecutive units up to about this size (one row group "
        "per unit); 0: one part file per unit",
    )
    rows_per_part: int | None = option(
        None,
        help="one part file per unit of at most N rows: the same as --rows-per-unit N "
        "--target-part-mib 0",
    )
    stall_timeout: float = option(
        1800.0,
        help="fail (exit 1) after this many seconds in which no stage made progress, naming what "
        "the job waits for",
    )
    shared_fs: bool = option(
        False,
        help="local --input/--output/--previous paths are on storage every Ray node mounts (NFS, "
        "EFS); without it they are refused on a cluster that spans hosts",
    )
    # The quality gate (embed/gate.py, docs/quality.md): checks of the written vectors before
    # the manifest; they read the output and never change it.
    probe_queries: str | None = option(
        None,
        metavar="FILE",
        help="JSONL of probe queries (query, relevant_ids; sample-data's queries.jsonl): "
        "NDCG@10 and Recall@10 of the new vectors are scored before the manifest is written "
        "(and, with --previous, the drift report's neighbour overlap@10)",
    )
    min_ndcg: float | None = option(
        None,
        help="refuse to publish (exit 3, no manifest) when the probe's NDCG@10 is below this "
        "(needs --probe-queries; default: recorded, not checked)",
    )
    min_parity_cos: float = option(
        0.99,
        help="refuse to publish (exit 3, no manifest) when any sampled stored vector's cosine to "
        "the reference's vector of the same text (docs/quality.md) is below this",
    )
    parity_rows: int | None = option(
        None,
        help="rows whose vectors the parity check compares with the reference model's for the "
        "same text, embedded on the driver or, on a --previous night, kept by the last one "
        "(docs/quality.md; default: one in 100 of the output's rows, at least 64 and at most 256; "
        "0: off)",
    )
    drift_category_column: str | None = option(
        None,
        help="with --previous: the input column whose values group listings for the drift "
        "report's per-category centroid shift (default: no categories)",
    )
    price_per_hour: float | None = option(
        None,
        metavar="USD",
        help="price of one node-hour, for the ledger's estimated cost (cluster.yaml lists the "
        "assumed AWS list prices of its node types)",
    )
    sink: str | None = option(
        None,
        metavar="URI",
        help="after the output commits, load it into a LanceDB table: lancedb://PATH, local or "
        "lancedb://s3://bucket/prefix (docs/sinks.md; needs fashion-batch[lancedb])",
    )
    sink_table: str = option("listings", help="the --sink table's name")
    sink_columns: str | None = option(
        None,
        metavar="COLS",
        help="comma-separated input columns copied into the --sink table beside id and embedding",
    )
    sink_index_threshold: int = option(
        100_000,
        metavar="ROWS",
        help="build the --sink table's ANN index (IVF_HNSW_SQ) once it holds this many rows; "
        "below it searches are exact",
    )
    extra: dict = field(default_factory=dict)  # recorded in the manifest (e.g. the command line)

    def __post_init__(self):
        def positive(name: str, value, allow_none: bool = True):
            if value is None and allow_none:
                return
            if value is None or value <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")

        positive("rows_per_part", self.rows_per_part)
        if self.rows_per_part is not None:
            self.rows_per_unit, self.target_part_mib = self.rows_per_part, 0.0
        positive("rows_per_unit", self.rows_per_unit, allow_none=False)
        if self.target_part_mib < 0:
            raise InputError(f"--target-part-mib must be >= 0, got {self.target_part_mib}")
        positive("stall_timeout", self.stall_timeout, allow_none=False)
        if self.price_per_hour is not None and self.price_per_hour < 0:
            raise InputError(f"--price-per-hour must be >= 0, got {self.price_per_hour}")
        positive("sink_index_threshold", self.sink_index_threshold, allow_none=False)
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
        if self.min_ndcg is not None and not self.probe_queries:
            raise InputError("--min-ndcg needs --probe-queries (the queries it is scored on)")
        if not -1.0 <= self.min_parity_cos <= 1.0:
            raise InputError(f"--min-parity-cos must be in [-1, 1], got {self.min_parity_cos}")
        if self.parity_rows is not None and self.parity_rows < 0:
            raise InputError(f"--parity-rows must be >= 0, got {self.parity_rows}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be {'|'.join(PRECISIONS)}, got {self.precision!r}")
        if self.runner not in RUNNERS:
            raise InputError(f"--runner must be {'|'.join(RUNNERS)}, got {self.runner!r}")
        pool = self.pool_flags()
        if self.runner == "local" and pool:
            raise InputError(f"{pool[0]} sizes Ray's actor pool: use it with --runner ray or auto")
        if self.backend not in BACKENDS:
            raise InputError(f"--backend must be {'|'.join(BACKENDS)}, got {self.backend!r}")
        try:
            self.template = Template(self.text_template)
            fix = self.fix_template
            self.fix = Template(fix, "--fix-template") if fix is not None else None
        except ValueError as e:
            raise InputError(str(e)) from e
        if self.fix_template == self.text_template:
            raise InputError(
                "--fix-template is the --text-template: it would fail the same rows again"
            )
        self._check_sink()

    def _check_sink(self) -> None:
        from fashion_batch.sinks import check_table_name, parse_sink, split_columns

        check_table_name(self.sink_table)
        self.sink_column_names = split_columns(self.sink_columns)
        if self.sink is None:
            if self.sink_columns is not None:
                raise InputError("--sink-columns needs --sink")
            return
        parse_sink(self.sink)

    def pool_flags(self) -> list[str]:
        """The actor-pool flags given (`--num-actors`, ...): only Ray's runner has a pool."""
        return [f"--{n.replace('_', '-')}" for n in POOL_FLAGS if getattr(self, n) is not None]

    @property
    def columns(self) -> list[str]:
        """The input columns the job reads: the id column, then the templates' columns."""
        fix = self.fix.columns if self.fix is not None else []
        return list(dict.fromkeys([self.id_column, *self.template.columns, *fix]))


# EmbedConfig fields that only schedule the work: they may change between a crash and the re-run
# that resumes it. Every other field (a new one included, until it is listed here) is part of the
# run's fingerprint, because it may decide which rows land where or what their embeddings are.
SCHEDULING_ONLY = {
    "input",  # the input files themselves are fingerprinted (path, size, mtime)
    "output",
    "batch_size",
    "num_actors",
    "min_actors",
    "max_actors",
    "gpus_per_actor",
    "cpus_per_actor",
    "threads_per_actor",
    "runner",
    "overwrite",
    "stall_timeout",
    "shared_fs",
    "probe_queries",  # the gate's settings: a rerun with other thresholds resumes and re-checks
    "min_ndcg",
    "min_parity_cos",
    "parity_rows",
    "drift_category_column",  # reports on the output, never change it
    "price_per_hour",
    # the sink loads a finished output; it never changes the Parquet output, so adding --sink to
    # a finished run's command loads that output instead of refusing it as another job's
    "sink",
    "sink_table",
    "sink_columns",
    "sink_index_threshold",
    "extra",
    "rows_per_part",  # folded into rows_per_unit and target_part_mib, which are fingerprinted
}


def fingerprint_settings(config: EmbedConfig) -> dict:
    """The settings that decide which rows land in which file and what their embeddings are."""
    settings = {
        f.name: getattr(config, f.name) for f in fields(config) if f.name not in SCHEDULING_ONLY
    }
    if settings.get("previous"):
        settings["previous"] = redact(settings["previous"])  # recorded in run.json
    return settings
