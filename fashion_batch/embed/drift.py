"""The drift report of an incremental nightly run (`--previous`): OUTPUT/report/drift.json + .png.

The measurements are evaluate/drift.py's. What differs from comparing two finished outputs is the
same-text cosine: tonight's vectors of unchanged listings are *carried* from last night's output
(embed/incremental.py), so comparing tonight's stored vectors with last night's would always say
1.0 and prove nothing. Instead the driver re-embeds a sample of unchanged listings
(`gate.sample_size` of them: those with the smallest content hashes) with tonight's model and
compares each fresh vector with the one last night stored for the same text. The backend is the
actors' own when they ran on CPU (then any difference is drift of the model files or the
runtime); after GPU actors the driver uses torch fp32, so the cosine also holds the GPU's
fp16/bf16 rounding. Probe queries are encoded by the same driver encoder for both snapshots (the
model is the same: `--previous` insists on it); centroids cover every id in both snapshots.
"""

from __future__ import annotations

import logging
import os
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.gate import sample_size
from fashion_batch.embed.layout import REPORT_DIR
from fashion_batch.embed.publish import locate, units_of
from fashion_batch.errors import InputError
from fashion_batch.evaluate import drift
from fashion_batch.evaluate.snapshots import Snapshot, similarity_name
from fashion_batch.io.fs import redact

log = logging.getLogger(__name__)


def check(config: EmbedConfig, plan) -> None:
    """Refuse, before anything is written, a drift setting the run cannot honour (exit 2)."""
    from fashion_batch.evaluate.job import read_queries

    if config.probe_queries:
        read_queries(config.probe_queries, "--probe-queries")
    if config.drift_category_column is None:
        return
    if config.previous is None:
        raise InputError("--drift-category-column needs --previous (the drift report compares)")
    for path in sorted({u.path for u in plan.units}):
        with plan.in_fs.open_input_file(path) as f:
            names = pq.read_schema(f).names
        if config.drift_category_column not in names:
            raise InputError(
                f"--drift-category-column {config.drift_category_column!r}: no such column in "
                f"{path} (has: {', '.join(names)})"
            )


def report(config: EmbedConfig, plan, manifest: dict, gpus: float) -> dict:
    """Write OUTPUT/report/drift.{json,png}; return the manifest's `drift` entry."""
    from fashion_batch.evaluate.job import read_queries

    prev = plan.previous
    old = Snapshot(prev.uri, prev.fs, prev.path, prev.manifest)
    new = Snapshot(redact(config.output), plan.out_fs, plan.output, manifest)
    indexes = (prev.index, new.index())
    rows = drift.same_text_rows(*indexes, sample_size(manifest["rows_out"]))
    encoder, backend = _driver_encoder(config, gpus)
    fresh = encoder.encode(_texts(config, plan, new, rows))  # (n, D)
    stored = old.vectors(rows["part_old"].to_pylist(), rows["row_old"].to_pylist())  # (n, D)
    compared = (
        "last night's stored vector vs tonight's model re-embedding the same text on the driver "
        f"({backend}); tonight's stored vectors of unchanged listings are carried copies"
    )
    queries = None
    if config.probe_queries:
        queries = [q["query"] for q in read_queries(config.probe_queries, "--probe-queries")]
    categories = None
    if config.drift_category_column:
        categories = drift.read_categories(
            config.input, config.id_column, config.drift_category_column, "--drift-category-column"
        )
    sim = similarity_name(plan.model["path"])
    cos = drift.cosines(stored, fresh)  # (n,)
    result = drift.compare(
        old,
        new,
        indexes,
        cos,
        compared,
        queries,
        (encoder.encode, encoder.encode),
        (sim, sim),
        categories,
    )
    drift.write_report(plan.out_fs, posixpath.join(plan.output, REPORT_DIR), result, cos)
    return _entry(result)


def _driver_encoder(config: EmbedConfig, gpus: float):
    """(encoder, its description): the actors' backend on CPU, torch fp32 after GPU actors."""
    from fashion_batch.encoders.load import load_encoder
    from fashion_batch.encoders.registry import resolve

    if gpus > 0:
        backend, precision = "torch", "fp32"
    else:
        backend, precision = (
            resolve(config.backend, cuda=False, precision=config.precision),
            (config.precision),
        )
    threads = os.cpu_count() or 1  # the pipeline is over: the driver has the machine's cores
    encoder = load_encoder(config.model, backend, "cpu", precision, None, config.normalize, threads)
    return encoder, f"{backend}, {precision}, CPU"


def _texts(config: EmbedConfig, plan, new: Snapshot, rows: pa.Table) -> list[str]:
    """The cleaned text of each sampled row, read back from tonight's input: a part's row
    groups are its units (publish.py), each holding its unit's embedded rows in the unit's
    order, so row r of a unit's row group is the r-th row PrepareText kept of that unit."""
    from fashion_batch.embed.stages import HASH, REASON, TEXT, PrepareText, prepare_unit

    units = {u.index: u for u in plan.units}
    spans = units_of(new.manifest)
    prepare = PrepareText.for_config(config, plan.duplicates)
    parts, wanted = rows["part"].to_pylist(), rows["row"].to_pylist()
    hashes = rows["content_hash"].to_pylist()
    where = [None] * len(rows)  # (unit, row in unit) of each sampled row
    for part in sorted(set(parts)):
        name = new.parts[part]
        mine = np.flatnonzero(np.array(parts) == part)
        path = posixpath.join(new.path, name)
        located = locate(new.fs, path, spans[name], [wanted[i] for i in mine])
        for i, loc in zip(mine, located, strict=True):
            where[i] = loc
    texts = [None] * len(rows)
    for unit in sorted({u for u, _ in where}):
        t = prepare_unit(plan.in_fs, units[unit], config.columns, prepare)
        t = t.filter(pc.is_null(t.column(REASON)))
        for i in (i for i, (u, _) in enumerate(where) if u == unit):
            row = where[i][1]
            if t.column(HASH)[row].as_py() != hashes[i]:
                raise RuntimeError(f"unit {unit}: row {row} is not the hashed text")
            texts[i] = t.column(TEXT)[row].as_py()
    return texts


def _entry(result: dict) -> dict:
    """What the manifest records of the report: where it is and its headline numbers."""
    st = result["same_text"]
    neighbours = result["neighbours"]
    shifts = result["centroid_shift"]
    return {
        "report": posixpath.join(REPORT_DIR, "drift.json"),
        "plot": posixpath.join(REPORT_DIR, "drift.png"),
        "same_text_rows": st["rows"],
        "same_text_cos_min": st["min"],
        "same_text_cos_mean": st["mean"],
        f"overlap@{drift.K}": neighbours[f"overlap@{drift.K}"] if neighbours else None,
        "max_centroid_shift": max((c["shift"] for c in shifts.values()), default=None)
        if shifts
        else None,
    }
