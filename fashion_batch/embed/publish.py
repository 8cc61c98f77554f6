"""Publishing: staged units become the parts readers see, only after the quality gate passed.

    _staging/unit-00000.parquet … unit-00010.parquet   →  part-00000.parquet (one row group each)
    _staging/quarantine/unit-…                          →  quarantine/part-00000.parquet
    _staging/hashes/unit-…                              →  _state/hashes/part-00000.parquet

Why parts are not units: a unit is what an actor embeds at once and what a killed run resumes
from, so it stays a few thousand rows; an object store wants files of about a hundred MiB (100M
listings in 4,096-row parts would be ~24,000 objects). A part is a run of consecutive units whose
estimated size stays within --target-part-mib, a function of the units' row counts only, so the
same run always publishes the same parts. Each unit stays one row group of its part, so reading
a few rows (`--previous` carrying vectors, the drift sample) reads only their units.

Why staged first: a refused quality gate must leave the previous snapshot in OUTPUT untouched
(design.md, exit 3). Until publish, the run writes only under `_staging/` and `_state/`; publish
records what it replaces and writes (state.py: publish.json), withdraws the old manifest, writes
the parts, and deletes the old snapshot's files that no new part replaced. The job writes the
new manifest after it, then drops the staged units (RunState.end_publish). A publish killed
midway leaves no manifest; the rerun of the same command publishes again from the staged units.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.layout import (
    QUARANTINE_DIR,
    STAGING_DIR,
    embedding_files,
    part_name,
    unit_name,
)
from fashion_batch.embed.state import RunState
from fashion_batch.io.atomic import copy_atomic, write_row_groups_atomic

ID_BYTES = 16  # estimated bytes of an id beside its vector (8 for int64, more for strings)
MIB = 1 << 20


@dataclass(frozen=True)
class Part:
    """One published part: consecutive units, in unit order."""

    index: int
    units: tuple[int, ...]
    quarantine: tuple[int, ...]  # the units among them that quarantined rows

    @property
    def name(self) -> str:
        return part_name(self.index)

    @property
    def files(self) -> list[str]:
        return [self.name] + (
            [posixpath.join(QUARANTINE_DIR, self.name)] if self.quarantine else []
        )


def group_units(stats: list[dict], target_mib: float) -> list[Part]:
    """Cut the units (their statistics rows, any order) into parts of at most `target_mib`
    estimated size (rows × (4·dim + ID_BYTES)); a unit larger than that is a part of its own.
    `target_mib` 0: one part per unit."""
    parts, units, quarantine, size = [], [], [], 0.0
    limit = target_mib * MIB
    for s in sorted(stats, key=lambda s: s["unit"]):
        rows = s["rows_out"] * (4 * s["dim"] + ID_BYTES)
        if units and (limit <= 0 or size + rows > limit):
            parts.append(Part(len(parts), tuple(units), tuple(quarantine)))
            units, quarantine, size = [], [], 0.0
        units.append(s["unit"])
        if s["rows_quarantined"]:
            quarantine.append(s["unit"])
        size += rows
    if units:
        parts.append(Part(len(parts), tuple(units), tuple(quarantine)))
    return parts


def publish(fs: pafs.FileSystem, output: str, stats: list[dict], target_mib: float) -> dict:
    """Replace OUTPUT's snapshot with this run's staged units; return what the manifest records:
    {"files": [...], "part_units": {part: [first unit, last unit]}}. Parts are written by Ray
    tasks (retried if a node is lost) when there are several and Ray is up, else here."""
    state = RunState(fs, output)
    parts = group_units(stats, target_mib)
    files = [f for p in parts for f in p.files]
    old = state.begin_publish(files)
    _write_all(fs, output, parts)
    state.drop_replaced(old, files)
    return {
        "files": files,
        "part_units": {p.name: [p.units[0], p.units[-1]] for p in parts},
        "target_part_mib": target_mib,
    }


def uses_ray(stats: list[dict], target_mib: float) -> bool:
    """Whether `publish` would write these units' parts with Ray tasks (several parts)."""
    return len(group_units(stats, target_mib)) > 1


def _write_all(fs: pafs.FileSystem, output: str, parts: list[Part]) -> None:
    import ray

    if len(parts) > 1 and ray.is_initialized():
        # I/O bound: a small CPU share, so they start beside anything still holding the cores
        task = ray.remote(num_cpus=0.25, max_retries=3)(write_part)
        ray.get([task.remote(fs, output, p) for p in parts])
    else:
        for p in parts:
            write_part(fs, output, p)


def write_part(fs: pafs.FileSystem, output: str, part: Part) -> None:
    """Write one part, its quarantine part and its hashes from the staged units (idempotent)."""
    staged = [posixpath.join(STAGING_DIR, unit_name(u)) for u in part.units]
    state = RunState(fs, output)
    _concat(fs, [posixpath.join(output, f) for f in staged], posixpath.join(output, part.name))
    _concat(fs, [state.hashes_path(f) for f in staged], state.hashes_path(part.name))
    if part.quarantine:
        q = [
            posixpath.join(output, STAGING_DIR, QUARANTINE_DIR, unit_name(u))
            for u in part.quarantine
        ]
        _concat(fs, q, posixpath.join(output, QUARANTINE_DIR, part.name))


def _concat(fs: pafs.FileSystem, sources: list[str], dest: str) -> None:
    """`dest` = the sources' rows, one row group per source; a single source is copied as is."""
    if len(sources) == 1:
        copy_atomic(fs, sources[0], dest)
        return

    def tables():
        for path in sources:
            with fs.open_input_file(path) as f:
                yield pq.read_table(f)

    with fs.open_input_file(sources[0]) as f:
        schema = pq.read_schema(f)
    write_row_groups_atomic(fs, schema, tables(), dest)


def units_of(manifest: dict) -> dict[str, list[int]]:
    """{part file: its units, in order} of a finished output (an output written before parts
    spanned units has one unit per part, named after it)."""
    spans = manifest.get("part_units")
    if spans is not None:
        return {name: list(range(a, b + 1)) for name, (a, b) in spans.items()}
    parts = embedding_files(manifest["files"])
    return {name: [int(name[len("part-") : -len(".parquet")])] for name in parts}


def locate(fs: pafs.FileSystem, path: str, units: list[int], rows) -> list[tuple[int, int]]:
    """(unit, row within the unit's embedded rows) of each part-wide row index in `rows`: the
    part's row groups are its units (`units`, in order), read from its footer alone."""
    import numpy as np

    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    if len(sizes) != len(units):
        raise RuntimeError(f"{path}: {len(sizes)} row groups for {len(units)} units")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    groups = np.searchsorted(starts, rows, side="right") - 1
    return [(units[g], int(r - starts[g])) for g, r in zip(groups, rows, strict=True)]
