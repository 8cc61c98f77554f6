"""The output contract (design.md, "Output"): file names, the part and quarantine schemas, the
quarantine reasons, and the manifest's location.

    OUTPUT/part-NNNNN.parquet              published parts: consecutive units, one row group each
    OUTPUT/quarantine/part-NNNNN.parquet   the same units' quarantined rows, if any
    OUTPUT/manifest.json                   written last
    OUTPUT/_staging/unit-NNNNN.parquet     one file per unit of work until the run publishes
    OUTPUT/_staging/quarantine/unit-NNNNN.parquet

Units are the unit of work and resume (a few thousand rows); parts are what readers and object
stores see (about --target-part-mib each). Staged files sit under `_staging/`, which readers that
list OUTPUT skip (a leading underscore), until the quality gate passes (publish.py).
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.fs as pafs

from fashion_batch.io.atomic import read_json

MISSING_ID = "missing_id"  # the id is null
INVALID_ID = "invalid_id"  # a float id that is NaN or infinite: no value to find the listing by
EMPTY_TEXT = "empty_text"
DUPLICATE_ID = "duplicate_id"
INVALID_UTF8 = "invalid_utf8"  # a template column holds bytes that are not UTF-8
TEMPLATE_ERROR = "template_error"  # a value the template's format spec cannot format
REASONS = (MISSING_ID, INVALID_ID, EMPTY_TEXT, DUPLICATE_ID, INVALID_UTF8, TEMPLATE_ERROR)
# What `--fix-template` can recover: the row has an id, but the text template gave it no text.
# An id problem is never a text problem, and bad bytes are `--fix-invalid-utf8`'s.
TEMPLATE_FIXABLE = (TEMPLATE_ERROR, EMPTY_TEXT)
MANIFEST = "manifest.json"
QUARANTINE_DIR = "quarantine"
STAGING_DIR = "_staging"
REPORT_DIR = "report"  # drift.json / drift.png of a --previous run (embed/drift.py)


def output_schema(id_field: pa.Field, dim: int, metadata: dict[str, str]) -> pa.Schema:
    """id (input name and type) + embedding fixed_size_list<float32>[dim], with model metadata."""
    return pa.schema(
        [id_field, pa.field("embedding", pa.list_(pa.float32(), dim))],
        metadata={k: str(v) for k, v in metadata.items()},
    )


def quarantine_schema(id_field: pa.Field) -> pa.Schema:
    return pa.schema(
        [id_field.with_nullable(True), pa.field("reason", pa.string()), ("text", pa.string())]
    )


def read_manifest(fs: pafs.FileSystem, output: str) -> dict | None:
    """The manifest of a finished output, or None (not finished, or not an output)."""
    return read_json(fs, posixpath.join(output, MANIFEST))


def embedding_files(files: list[str]) -> list[str]:
    """The embedding files among OUTPUT-relative `files` (a manifest's or a unit's commit
    record's): the published or staged quarantine files left out."""
    staged = posixpath.join(STAGING_DIR, QUARANTINE_DIR) + "/"
    return [f for f in files if not f.startswith((QUARANTINE_DIR + "/", staged))]


def part_name(index: int) -> str:
    """A published part's file name (and its quarantine part's, under quarantine/)."""
    return f"part-{index:05d}.parquet"


def unit_name(index: int) -> str:
    """A unit's staged file name, under _staging/ (and _staging/quarantine/)."""
    return f"unit-{index:05d}.parquet"
