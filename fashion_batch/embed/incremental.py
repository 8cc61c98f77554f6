"""Incremental nightly runs (`--previous URI`): embed only what is new or changed.

Last night's output holds, beside each part file, the content hash of every embedded row
(state.py: `_state/hashes/part-NNNNN.parquet`, id + content_hash in the part's row order; the
part files themselves keep exactly the id and embedding columns design.md fixes). Tonight's run
plans its units over tonight's catalog exactly as a full run would. For each unit the driver joins
the unit's ids with last night's index (id → content hash, part file, row) and ships the matches
with the unit. PrepareUnits hashes each row's cleaned text; a row whose id and hash both match is
*unchanged*: its embedding is read from last night's part file (only the row groups, i.e. units,
that hold it) instead of being recomputed. Every
other embedded row is *new* (id not in last night's output) or *changed* (same id, other text).
Last night's embedded ids missing from tonight's output are *removed* (gone from the catalog, or
quarantined tonight): removed = previous rows_out − changed − unchanged, since ids are unique in an
output.

So the result is a full run's result: same units, same files, same rows in the same order, same
quarantine. A carried embedding is what tonight's model computes for the same text, up to the
float noise of a different batch composition, because the previous output must come from
the same model weights, backend, template, normalize setting and id column (checked here: exit 2).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.layout import embedding_files, read_manifest
from fashion_batch.embed.plan import Unit
from fashion_batch.embed.state import read_hashes
from fashion_batch.errors import InputError
from fashion_batch.io.fs import filesystem, redact
from fashion_batch.io.ipc import from_ipc, to_ipc
from fashion_batch.io.rows import take_rows

NEW, CHANGED, UNCHANGED = "new", "changed", "unchanged"
RECHECKED = "rechecked"  # unchanged, but embedded again on purpose (recheck.py)
DELTAS = (NEW, CHANGED, UNCHANGED, RECHECKED)


@dataclass
class Previous:
    """A finished earlier output, indexed by id."""

    uri: str
    fs: pafs.FileSystem
    path: str
    manifest: dict
    parts: list[str]  # its part file names; `part` in the index points into this list
    index: pa.Table  # id, content_hash, part (int32), row (int32)

    @property
    def identity(self) -> dict:
        """What the fingerprint of a run built on this output records."""
        m = self.manifest
        return {"uri": self.uri, "finished_at": m.get("finished_at"), "run": m.get("run_digest")}

    def stage_args(self) -> dict:
        """What PrepareUnits needs to read carried embeddings (all picklable)."""
        return {"fs": self.fs, "path": self.path, "parts": self.parts, "dim": self.manifest["dim"]}


def load_previous(
    uri: str, model_sha256: str, settings: dict, id_type: pa.DataType | None
) -> Previous:
    """Open and check `--previous`; raise InputError (exit 2) if it cannot be built on."""
    fs, path = filesystem(uri)
    uri = redact(uri)  # recorded (run.json, manifest) and printed from here on
    manifest = read_manifest(fs, path)
    if manifest is None:
        raise InputError(f"--previous {uri}: no manifest.json, so not a finished output")
    wanted = {
        "model weights and files (digest)": (manifest["model"]["sha256"], model_sha256),
        "text template": (manifest.get("text_template"), settings["text_template"]),
        "normalize": (manifest.get("normalized"), settings["normalize"]),
        "id column": (manifest.get("id_column"), settings["id_column"]),
        "backend": (manifest.get("backend", "torch"), settings.get("backend", "torch")),
    }
    for what, (theirs, ours) in wanted.items():
        if theirs != ours:
            raise InputError(
                f"--previous {uri} was made with another {what} ({theirs!r}, this run: "
                f"{ours!r}); its embeddings cannot be carried over: run without --previous"
            )
    missing = [
        name
        for name, info in zip(
            manifest["files"],
            fs.get_file_info([posixpath.join(path, f) for f in manifest["files"]]),
            strict=True,
        )
        if info.type == pafs.FileType.NotFound
    ]
    if missing:
        raise InputError(
            f"--previous {uri}: its manifest lists {missing[0]}, which is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; that output is damaged: run without --previous"
        )
    parts = embedding_files(manifest["files"])
    tables = []
    for i, name in enumerate(parts):
        try:
            t = read_hashes(fs, path, name)
        except (OSError, pa.ArrowException) as e:
            raise InputError(
                f"--previous {uri}: cannot read the content hashes of {name} ({e}); an output "
                "written before content hashes existed cannot be built on: run without --previous"
            ) from e
        tables.append(
            t.append_column("part", pa.array(np.full(len(t), i, np.int32))).append_column(
                "row", pa.array(np.arange(len(t), dtype=np.int32))
            )
        )
    index = pa.concat_tables(tables) if tables else None
    if index is None or len(index) != manifest["rows_out"]:
        n = 0 if index is None else len(index)
        if manifest["rows_out"] or n:
            raise InputError(
                f"--previous {uri}: {n} content hashes for {manifest['rows_out']} rows"
            )
        index = (
            pa.table(
                {
                    "id": pa.array([], id_type or pa.int64()),
                    "content_hash": pa.array([], pa.string()),
                }
            )
            .append_column("part", pa.array([], pa.int32()))
            .append_column("row", pa.array([], pa.int32()))
        )
    if id_type is not None and index.schema.field("id").type != id_type:
        raise InputError(
            f"--previous {uri}: id column is {index.schema.field('id').type}, input has {id_type}"
        )
    return Previous(uri, fs, path, manifest, parts, index)


def plan_carry(
    fs: pafs.FileSystem,
    units: list[Unit],
    id_column: str,
    previous: Previous,
    recheck: pa.Array | None = None,
) -> dict[int, bytes]:
    """{unit index: Arrow IPC table (offset, content_hash, part, row, recheck)} of the unit's rows
    whose id was embedded last night; `recheck`: ids to embed again even when unchanged
    (recheck.py). Reads each input file's id column once."""
    by_file = defaultdict(list)
    for u in units:
        by_file[u.path].append(u)
    out = {}
    for path, file_units in by_file.items():
        with fs.open_input_file(path) as f:
            ids = pq.read_table(f, columns=[id_column]).column(0)
        current = pa.table({"id": ids, "file_row": pa.array(np.arange(len(ids), dtype=np.int64))})
        matched = current.join(previous.index, keys="id", join_type="inner")
        again = pc.is_in(matched.column("id"), value_set=recheck) if recheck is not None else None
        matched = matched.drop_columns("id").append_column(
            "recheck", again if again is not None else pa.repeat(False, len(matched))
        )
        file_rows = matched.column("file_row").to_numpy()
        for u in file_units:
            mine = (file_rows >= u.file_row) & (file_rows < u.file_row + u.length)
            if not mine.any():
                continue
            t = matched.filter(pa.array(mine))
            offset = pc.subtract(t.column("file_row"), pa.scalar(u.file_row, pa.int64()))
            t = t.drop_columns("file_row").append_column("offset", offset)
            out[u.index] = to_ipc(t)
    return out


def carry(
    previous: dict, plan: bytes | None, hashes: list[str | None]
) -> tuple[pa.FixedSizeListArray, list[str | None]]:
    """(carried embeddings, delta) for one unit's rows.

    `hashes` holds each row's content hash, None for a quarantined row. A row is unchanged when
    its id was embedded last night with the same hash: its embedding comes from last night's part
    file (null for every other row), unless the plan marks it for a recheck, when it is embedded
    again (recheck.py). delta is new | changed | unchanged | rechecked (None if quarantined).

    Args:
        previous: Previous.stage_args().
        plan: this unit's entry of plan_carry, or None if none of its ids were embedded last night.
        hashes: the unit's content hashes, row order.
    """
    n, dim = len(hashes), previous["dim"]
    delta = [None if h is None else NEW for h in hashes]
    vectors = np.zeros((n, dim), dtype=np.float32)  # (n, D)
    carried = np.zeros(n, dtype=bool)
    if plan is not None:
        t = from_ipc(plan)
        wanted = defaultdict(list)  # previous part index → [(row in unit, row in part)]
        for offset, h, part, row, again in zip(
            t.column("offset").to_pylist(),
            t.column("content_hash").to_pylist(),
            t.column("part").to_pylist(),
            t.column("row").to_pylist(),
            t.column("recheck").to_pylist(),
            strict=True,
        ):
            if hashes[offset] is None:
                continue
            if hashes[offset] == h and again:
                delta[offset] = RECHECKED  # no vector: the actor embeds it
            elif hashes[offset] == h:
                delta[offset] = UNCHANGED
                wanted[part].append((offset, row))
            else:
                delta[offset] = CHANGED
        for part, pairs in wanted.items():
            path = posixpath.join(previous["path"], previous["parts"][part])
            rows = np.array([r for _, r in pairs])
            dest = np.array([o for o, _ in pairs])
            emb = take_rows(previous["fs"], path, rows, "embedding")
            if emb.type.list_size != dim:
                raise RuntimeError(f"{path}: embedding dim {emb.type.list_size}, expected {dim}")
            flat = emb.flatten().to_numpy(zero_copy_only=False)
            vectors[dest] = flat.reshape(len(rows), dim)  # (k, D)
            carried[dest] = True
    array = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1)), dim, mask=pa.array(~carried)
    )
    return array, delta
