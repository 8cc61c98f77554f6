"""The drift report of an incremental nightly run (`--previous`): OUTPUT/report/drift.json + .png.

The measurements are evaluate/drift.py's. What differs from comparing two finished outputs is the
same-text cosine: tonight's vectors of unchanged listings are *carried* from last night's output
(embed/incremental.py), so comparing tonight's stored vectors with last night's would always say
1.0 and prove nothing. Instead a fixed sample of unchanged listings is embedded again by
tonight's actors (embed/recheck.py), and each fresh vector is compared with the one last night
stored for the same text: any difference is drift of the model files, the backend or the
runtime. The probe queries' vectors are the gate's, used for both snapshots (the model is the
same: `--previous` insists on it; a driver encoder only when the gate made none); centroids
cover every id in both snapshots.
"""

from __future__ import annotations

import logging
import os
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.layout import REPORT_DIR
from fashion_batch.embed.recheck import as_matrix, join
from fashion_batch.errors import InputError
from fashion_batch.evaluate import drift
from fashion_batch.evaluate.snapshots import Snapshot, similarity_name
from fashion_batch.io.fs import redact

log = logging.getLogger(__name__)


def check(config: EmbedConfig, plan) -> None:
    """Refuse, before anything is written, a drift setting the run cannot honour (exit 2). The
    probe file is the gate's, checked by gate.load_probe."""
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


def report(config: EmbedConfig, plan, manifest: dict, measured: tuple, actors, side) -> dict:
    """Write OUTPUT/report/drift.{json,png}; return the manifest's `drift` entry. `measured`:
    (rechecked, probe, queries): the rows tonight's actors embedded again
    (recheck.fresh_vectors), the probe queries (gate.load_probe) or None, and their vectors the
    gate used, or None; `actors`: the pool (PoolSize) or None; `side`: the run's sidecar
    (runtime/sidecar.py), which has matplotlib loaded and writes the files."""
    rechecked, probe, queries = measured
    prev = plan.previous
    old = Snapshot(prev.uri, prev.fs, prev.path, prev.manifest)
    new = Snapshot(redact(config.output), plan.out_fs, plan.output, manifest)
    cos = _same_text(prev, old, rechecked)  # (n,)
    compared = (
        "last night's stored vector vs tonight's, for listings whose text did not change and "
        "which tonight's actors embedded again instead of carrying (embed/recheck.py)"
    )
    texts, encoders = None, None
    if probe:
        texts = [q["query"] for q in probe]
        if queries is not None:  # the gate's vectors: the model is the same on both nights
            encode = _given(queries)
        else:
            encode = _driver_encoder(config, actors.gpus if actors else 0).encode
        encoders = (encode, encode)
    categories, indexes = None, (prev.index, None)
    if config.drift_category_column:
        categories = drift.read_categories(
            config.input, config.id_column, config.drift_category_column, "--drift-category-column"
        )
        indexes = (prev.index, new.index())
    sim = similarity_name(plan.model["path"])
    result = drift.compare(
        old, new, indexes, cos, compared, texts, encoders, (sim, sim), categories
    )
    directory = posixpath.join(plan.output, REPORT_DIR)
    side.submit(drift.write_report, plan.out_fs, directory, result, cos).result()
    return _entry(result)


def _given(vectors: np.ndarray):
    """An `encode` that returns the probe queries' vectors already made."""

    def encode(_texts: list[str]) -> np.ndarray:
        return vectors

    return encode


def _same_text(prev, old: Snapshot, rechecked: pa.Table) -> np.ndarray:
    """Cosines between last night's stored vector and tonight's fresh one, per rechecked row
    whose text is last night's."""
    rows = join(rechecked, prev.index, ["id", "content_hash"])  # the text is last night's
    if not len(rows):
        return np.zeros(0)
    stored = old.vectors(rows["part"].to_pylist(), rows["row"].to_pylist())  # (n, D)
    return drift.cosines(stored, as_matrix(rows["embedding"]))


def _driver_encoder(config: EmbedConfig, gpus: float):
    """The probe queries' encoder: the actors' backend on CPU, torch fp32 after GPU actors."""
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
    return load_encoder(config.model, backend, "cpu", precision, None, config.normalize, threads)


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
