"""`fashion-batch drift --old A --new B`: the drift report (evaluate/drift.py) of any two finished
embed outputs.

Both outputs are finished, so no re-embedding is needed: the same-text cosine compares the two
stored vectors of each sampled id whose content hash is equal in both. Probe queries are encoded
by each output's own model (torch fp32 on this machine), as recorded in its manifest and checked
by digest.
"""

from __future__ import annotations

from dataclasses import dataclass

from fashion_batch.errors import InputError
from fashion_batch.evaluate import drift
from fashion_batch.evaluate.snapshots import Snapshot, open_snapshot, similarity_name
from fashion_batch.io.fs import filesystem
from fashion_batch.options import option


@dataclass
class DriftConfig:
    """Settings of `fashion-batch drift`."""

    old: str = option(help="the earlier embed output (local or s3://)")
    new: str = option(help="the later embed output (local or s3://)")
    probe_queries: str | None = option(
        None, metavar="FILE", help="JSONL of probe queries: query, relevant_ids per line"
    )
    category_column: str | None = option(
        None, help="catalog column whose values group listings for the centroid shift"
    )
    catalog: str | None = option(
        None,
        metavar="URI",
        help="the catalog holding --category-column (default: the input --new recorded)",
    )
    sample: int = option(1000, help="most same-text listings whose vectors are compared")
    report_dir: str | None = option(
        None, metavar="URI", help="also write drift.json and drift.png into this directory"
    )
    json: bool = option(False, help="print the whole report as JSON")

    def __post_init__(self):
        if self.sample < 1:
            raise InputError(f"--sample must be >= 1, got {self.sample}")


def _encoder(snapshot: Snapshot, model_dir: str):
    from fashion_batch.encoders.load import load_encoder

    normalize = bool(snapshot.manifest.get("normalized", False))
    return load_encoder(model_dir, "torch", "cpu", "fp32", None, normalize).encode


def run(config: DriftConfig) -> dict:
    """The report; written to --report-dir too when given."""
    from fashion_batch.evaluate.job import read_queries

    old, new = open_snapshot(config.old, "--old"), open_snapshot(config.new, "--new")
    queries = None
    if config.probe_queries:
        queries = [q["query"] for q in read_queries(config.probe_queries, "--probe-queries")]
    categories = None
    if config.category_column:
        catalog = config.catalog or new.manifest.get("input")
        categories = drift.read_categories(
            catalog, new.manifest["id_column"], config.category_column, "--category-column"
        )
    indexes = (old.index(), new.index())
    rows = drift.same_text_rows(*indexes, config.sample)
    cos = drift.cosines(
        old.vectors(rows["part_old"].to_pylist(), rows["row_old"].to_pylist()),
        new.vectors(rows["part"].to_pylist(), rows["row"].to_pylist()),
    )
    encoders, sims = None, ("cosine", "cosine")
    if queries:
        dirs = (old.model_dir(), new.model_dir())
        encode_old = _encoder(old, dirs[0])
        same = old.manifest["model"]["sha256"] == new.manifest["model"]["sha256"]
        encoders = (encode_old, encode_old if same else _encoder(new, dirs[1]))
        sims = (similarity_name(dirs[0]), similarity_name(dirs[1]))
    compared = "the two outputs' stored vectors of the same id and the same text"
    report = drift.compare(old, new, indexes, cos, compared, queries, encoders, sims, categories)
    if config.report_dir:
        fs, path = filesystem(config.report_dir)
        drift.write_report(fs, path, report, cos)
    return report
