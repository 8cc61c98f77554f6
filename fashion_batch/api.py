"""The Python API: `embed(...)`, `replay_quarantine(...)` and `train(...)` for pipelines (Airflow
or Dagster tasks, notebooks) that call the jobs without a command line.

Each takes its job's one config dataclass, or what the CLI would build it from: a mapping of
settings, a TOML file (the same file as `--config`), keyword arguments, or a file or mapping with
keyword arguments on top (fashion_batch.config_file.build). Each returns a small frozen result
instead of the raw dicts, so a caller reads `result.rows_out` rather than a manifest key, and
raises the errors the CLI turns into exit codes: `UserError` (`InputError`, `ModelError`: exit 2)
for bad settings or input, found before anything is written, and `GateError` (exit 3) where a
quality gate refused to publish.

The jobs' own modules (and with them Ray and torch) are imported on the first call, not on
`import fashion_batch`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fashion_batch.config_file import build
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.replay import ReplayConfig
from fashion_batch.io.fs import redact
from fashion_batch.train.config import METRICS_FILE, TrainConfig

Config = Mapping[str, Any] | str | os.PathLike | None


@dataclass(frozen=True)
class EmbedResult:
    """What an embed run produced, read from its manifest (design.md, "Output").

    Attributes:
        output: the output URI (credentials redacted).
        manifest_path: OUTPUT/manifest.json, written last: its presence means the run finished.
        rows_in: input rows the run covered.
        rows_out: rows embedded (one row each in the part files).
        rows_quarantined: rows in OUTPUT/quarantine/, by reason in `quarantine_reasons`.
        dim: the embedding dimension.
        model: the model as given (path, hub id or alias).
        files: the part files, as the manifest lists them.
        started_at, finished_at: UTC timestamps of the run.
        rows_per_s: rows embedded per second of wall time.
        stage_seconds: wall time per stage (planning, embedding and writing).
        manifest: the whole manifest.json, for anything not lifted out above.
    """

    output: str
    manifest_path: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int] = field(hash=False)
    dim: int
    model: str
    files: tuple[str, ...]
    started_at: str
    finished_at: str
    rows_per_s: float | None
    stage_seconds: dict[str, float] = field(hash=False)
    manifest: dict[str, Any] = field(hash=False, repr=False)

    @classmethod
    def from_manifest(cls, output: str, manifest: dict[str, Any]) -> EmbedResult:
        output = redact(output)
        return cls(
            output=output,
            manifest_path=posixpath.join(output, "manifest.json"),
            rows_in=manifest["rows_in"],
            rows_out=manifest["rows_out"],
            rows_quarantined=manifest["rows_quarantined"],
            quarantine_reasons=dict(manifest.get("quarantine_reasons", {})),
            dim=manifest["dim"],
            model=manifest["model"]["name"],
            files=tuple(manifest["files"]),
            started_at=manifest["started_at"],
            finished_at=manifest["finished_at"],
            rows_per_s=manifest.get("rows_per_s"),
            stage_seconds=dict(manifest.get("stage_seconds", {})),
            manifest=manifest,
        )


@dataclass(frozen=True)
class TrainResult:
    """What a train run published.

    Attributes:
        output: the trained sentence-transformers model dir (`SentenceTransformer(output)`).
        metrics_path: OUTPUT/training_metrics.json.
        metrics: its content: loss per logging step, held-out evaluations before and after.
    """

    output: str
    metrics_path: str
    metrics: dict[str, Any] = field(hash=False, repr=False)


def embed(config: EmbedConfig | Config = None, /, **settings: Any) -> EmbedResult:
    """Embed a Parquet catalog: the same job as `fashion-batch embed`.

    Args:
        config: an `EmbedConfig`, a mapping of its settings, or a TOML file of them.
        settings: `EmbedConfig` settings by name, on top of `config` (not with an EmbedConfig).

    Raises:
        UserError: bad settings or input (exit 2 on the command line); nothing was written.
        GateError: a quality gate refused to publish (exit 3).
    """
    config = build(EmbedConfig, config, settings)
    from fashion_batch.embed.job import run

    return EmbedResult.from_manifest(config.output, run(config))


def replay_quarantine(config: ReplayConfig | Config = None, /, **settings: Any) -> EmbedResult:
    """Re-embed a finished output's quarantined rows under a fix, as a new snapshot: the same
    job as `fashion-batch replay-quarantine` (docs/quarantine.md).

    Args:
        config: a `ReplayConfig`, a mapping of its settings, or a TOML file of them.
        settings: `ReplayConfig` settings by name (`snapshot`, `output`, `fix_template`, ...).

    Raises:
        UserError: bad settings or input, or a fix with nothing to recover (exit 2 on the
            command line); nothing was written.
        GateError: a quality gate refused to publish (exit 3).
    """
    config = build(ReplayConfig, config, settings)
    from fashion_batch.embed.replay import run

    return EmbedResult.from_manifest(config.output, run(config))


def train(config: TrainConfig | Config = None, /, **settings: Any) -> TrainResult:
    """Fine-tune the seed architecture: the same job as `fashion-batch train`.

    Args:
        config: a `TrainConfig`, a mapping of its settings, or a TOML file of them.
        settings: `TrainConfig` settings by name, on top of `config` (not with a TrainConfig).

    Raises:
        UserError: bad settings or input (exit 2 on the command line); nothing was written.
        GateError: the fine-tuned model scored worse than the base; nothing was published.
    """
    config = build(TrainConfig, config, settings)
    from fashion_batch.train.job import run

    metrics = run(config)
    return TrainResult(
        output=config.output,
        metrics_path=os.path.join(config.output, METRICS_FILE),
        metrics=metrics,
    )
