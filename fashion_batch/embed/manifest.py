"""The manifest (design.md, "Output"): written last, its presence means the run finished; and the
one-screen summary `embed` prints from it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.incremental import DELTAS, RECHECKED
from fashion_batch.embed.layout import REASONS
from fashion_batch.io.fs import redact

SOFTWARE = ("fashion-batch", "ray", "torch", "sentence-transformers", "transformers", "pyarrow")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Clock:
    """Wall-clock marks of one run: start, end of planning, end of embedding, and the start-up
    milestones in between (`timeline`)."""

    started_at: str = field(default_factory=now)
    t0: float = field(default_factory=time.perf_counter)
    unix0: float = field(default_factory=time.time)
    t_plan: float | None = None
    t_embed: float | None = None
    marks: dict = field(default_factory=dict)

    def mark(self, name: str) -> None:
        """Record the first time `name` happened (later calls keep the first)."""
        self.marks.setdefault(name, time.perf_counter())

    def mark_planned(self) -> None:
        self.t_plan = time.perf_counter()

    def mark_embedded(self) -> None:
        self.t_embed = time.perf_counter()

    def timeline(self) -> dict:
        """Seconds from the start of `run` to each milestone: inputs checked (plan), Ray joined
        and the pool sized, the first unit back from the pipeline (actor start-up included), all
        units embedded, the quality gate checked, the drift report written (--previous), and
        `total` (now: the manifest is about to be written); and the start as a Unix time, so a
        caller that timed the whole process can tell interpreter start-up and shut-down apart."""
        out = {k: round(v - self.t0, 3) for k, v in self.marks.items()}
        if self.t_embed is not None:
            out["embedded"] = round(self.t_embed - self.t0, 3)
        out["total"] = round(time.perf_counter() - self.t0, 3)
        out["started_unix"] = round(self.unix0, 3)
        return out


def software() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in SOFTWARE:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "n/a"
    return out


def build(
    config: EmbedConfig,
    model: dict,
    stats: list[dict],
    rows_in: int,
    rows_now: int,
    clock: Clock,
) -> dict:
    """The manifest of a run from the per-unit statistics the writers returned.

    Args:
        config: the run's settings.
        model: {"name", "path", "sha256"} of the model.
        stats: one statistics row per unit (this run's and the resumed ones).
        rows_in: rows planned over the whole input.
        rows_now: rows of the units this run embedded (a resumed run skips finished ones).
        clock: the run's wall-clock marks.
    """
    stats = sorted(stats, key=lambda s: s["unit"])
    rows_out = sum(s["rows_out"] for s in stats)
    rows_q = sum(s["rows_quarantined"] for s in stats)
    if rows_out + rows_q != rows_in:
        raise RuntimeError(f"accounting: {rows_out} out + {rows_q} quarantined != {rows_in} in")
    dims = {s["dim"] for s in stats}
    if len(dims) > 1:
        raise RuntimeError(f"actors disagree on the embedding dim: {sorted(dims)}")
    stage_seconds = {
        "plan": round(clock.t_plan - clock.t0, 3),
        "embed_and_write": round(clock.t_embed - clock.t_plan, 3),
    }
    elapsed = time.perf_counter() - clock.t0
    return {
        "model": model,
        "dim": dims.pop() if dims else _model_dim(config.model),
        "normalized": config.normalize,
        "input": redact(config.input),
        "id_column": config.id_column,
        "text_template": config.text_template,
        "fix_template": config.fix_template,
        "fix_invalid_utf8": config.fix_invalid_utf8,
        "limit": config.limit,
        "precision": config.precision,
        "backend": config.backend,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": rows_q,
        "quarantine_reasons": {r: sum(s.get(f"q_{r}", 0) for s in stats) for r in REASONS},
        "files": [f for s in stats for f in s["files"]],
        "started_at": clock.started_at,
        "finished_at": now(),
        "rows_per_s": round(rows_now / elapsed, 2) if elapsed > 0 else None,
        "stage_seconds": stage_seconds,
        "stage_rows_per_s": _stage_rates(stage_seconds, rows_in, rows_now),
        "timeline": clock.timeline(),
        "nodes": nodes(stats),
        **({"extra": config.extra} if config.extra else {}),
        "software": software(),
    }


def nodes(stats: list[dict]) -> dict:
    """{Ray node id: {"actors": embedding actors that ran there, "units": units they embedded}},
    over the units this invocation embedded (a resumed run's earlier units are not counted)."""
    out: dict[str, dict] = {}
    actors: dict[str, set] = {}
    for s in stats:
        node = s.get("embed_node")
        if node is None:
            continue
        out.setdefault(node, {"actors": 0, "units": 0})["units"] += 1
        actors.setdefault(node, set()).add(s.get("embed_actor"))
    for node, ids in actors.items():
        out[node]["actors"] = len(ids)
    return dict(sorted(out.items()))


def _model_dim(model: str) -> int:
    """An empty input has no unit statistics: ask the model itself."""
    from fashion_batch.encoders.models import load_model

    return int(load_model(model, "cpu").get_embedding_dimension())


def _stage_rates(stage_seconds: dict, rows_planned: int, rows_embedded: int) -> dict:
    """Rows per second of each stage: planning covers every input row, embed_and_write only the
    rows of the units this run did (a resumed run skips the finished ones)."""
    rows = {"plan": rows_planned, "embed_and_write": rows_embedded}
    return {
        k: round(rows[k] / v, 2) if v > 0 and k in rows else None for k, v in stage_seconds.items()
    }


def delta_counts(previous, stats: list[dict]) -> dict:
    """--previous runs: rows new, changed, unchanged and removed since last night. `unchanged`
    counts the rechecked rows too, which were embedded again rather than carried (recheck.py)."""
    counts = {k: sum(s.get(f"d_{k}", 0) for s in stats) for k in DELTAS}
    counts["unchanged"] += counts[RECHECKED]
    counts["removed"] = previous.manifest["rows_out"] - counts["changed"] - counts["unchanged"]
    return {"previous": previous.uri, **counts}


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
    sink = manifest.get("sink")
    if sink:
        index = sink["index"]
        how = "exact search" if index["kind"] == "none" else f"{index['kind']} {index['action']}"
        lines.append(
            f"sink         {sink['uri']} table {sink['table']}: {sink['rows']} rows "
            f"({sink['action']}: {sink['inserted']} inserted, {sink['updated']} updated, "
            f"{sink['deleted']} deleted), {how}"
        )
    return "\n".join(lines)
