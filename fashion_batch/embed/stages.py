"""The embed job's stages: small callables over a `pa.Table`, each testable on a five-row table
without Ray (datatrove style: a step does one thing; where it runs is decided in embed/job.py).

    PrepareUnits (fused into CPU actors; CPU tasks beside GPU actors)  read a unit's row range,
                              render + clean text, mark quarantined rows
    EmbedUnits   (actors)     model loaded once per actor, GPU when present; encodes ok rows:
                              encode.py
    WriteUnits   (CPU tasks)  one part file per unit (+ its quarantine rows): write.py

Between stages a unit travels as one row holding its rows as an Arrow IPC payload (`pack`). Ray
Data re-cuts batches freely (and insists on a batch_size for GPU actors), but it never splits a
row: so every stage sees whole units, and a unit's output file always holds exactly its rows.
The row-level classes (`PrepareText`, encode.py's `Embed`) are what the unit-level ones call.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from fashion_batch.embed import ledger
from fashion_batch.embed.layout import (
    DUPLICATE_ID,
    EMPTY_TEXT,
    INVALID_ID,
    INVALID_UTF8,
    MISSING_ID,
    TEMPLATE_ERROR,
    TEMPLATE_FIXABLE,
)
from fashion_batch.embed.plan import Unit, read_unit, valid_ids
from fashion_batch.io.ipc import from_ipc, to_ipc
from fashion_batch.text import Template, content_hash, text_columns

log = logging.getLogger(__name__)

UNIT = "__unit"
ROW = "__row"  # row index within the input file
PATH = "__path"  # the input file
TEXT = "__text"  # cleaned text, what the model sees
RAW = "__raw"  # template rendered from uncleaned fields; kept for quarantined rows only
REASON = "__reason"  # null = embed this row
HASH = "__hash"  # content hash of the cleaned text (text.content_hash); null for quarantined rows
CARRIED = "__carried"  # --previous: last night's embedding of an unchanged row, else null
DELTA = "__delta"  # --previous: incremental.DELTAS; null for quarantined rows
PAYLOAD = "payload"
NODE = "__node"  # the Ray node id of the actor that embedded the unit (None outside Ray)
ACTOR = "__actor"  # that actor's id


def pack(unit: int, rows: pa.Table) -> dict:
    """One unit's rows as a single row: {"__unit": i, "payload": Arrow IPC bytes}."""
    return {UNIT: unit, PAYLOAD: to_ipc(rows)}


def unpack(units: pa.Table) -> list[tuple[int, pa.Table]]:
    """The (unit index, rows) pairs of a batch of packed units."""
    return [
        (unit, from_ipc(payload))
        for unit, payload in zip(
            units.column(UNIT).to_pylist(), units.column(PAYLOAD).to_pylist(), strict=True
        )
    ]


def packed_table(rows: list[dict]) -> pa.Table:
    return pa.table(
        {
            UNIT: pa.array([r[UNIT] for r in rows], pa.int32()),
            PAYLOAD: pa.array([r[PAYLOAD] for r in rows], pa.large_binary()),
        }
    )


class PrepareText:
    """Render and clean each row's text and decide whether it is embedded or quarantined: by the
    first reason that applies, in the order missing_id, invalid_id, duplicate_id, invalid_utf8,
    template_error, empty_text. The quarantine keeps the raw render (bad bytes as U+FFFD).

    A fix template (`--fix-template`, docs/quarantine.md) gets a second go at the rows the
    template quarantined as template_error or empty_text: a row it renders to a non-empty text
    is embedded with that text; one it fails too (or whose fix columns hold bytes that are not
    UTF-8) stays quarantined with the template's reason and raw render.

    Args:
        template: the text template ("{title}. {description}").
        id_column: the id column.
        duplicate_rows: {input file: sorted row indices} of rows whose id occurred earlier
            (plan.find_duplicate_rows); they are quarantined as duplicate_id.
        fix_template: the fallback template for template_error and empty_text rows, or None.
        fix_invalid_utf8: embed text with bad bytes shown as U+FFFD instead of quarantining the
            row as invalid_utf8.
    """

    def __init__(
        self,
        template: str,
        id_column: str,
        duplicate_rows: dict | None = None,
        fix_template: str | None = None,
        fix_invalid_utf8: bool = False,
    ):
        self.template = Template(template)
        self.id_column = id_column
        self.duplicate_rows = duplicate_rows or {}
        self.fix = Template(fix_template, "--fix-template") if fix_template else None
        self.fix_invalid_utf8 = fix_invalid_utf8

    @classmethod
    def for_config(cls, config, duplicate_rows: dict | None = None) -> PrepareText:
        """The PrepareText of an EmbedConfig: what the run, its gate and its drift report use."""
        return cls(
            config.text_template,
            config.id_column,
            duplicate_rows,
            config.fix_template,
            config.fix_invalid_utf8,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns, not_utf8 = text_columns(batch, self.template.columns)
        texts, failed = self.template.render_rows(columns, len(batch))
        ids = batch.column(self.id_column)
        checks = [
            (ids.is_null().to_pylist(), MISSING_ID),
            (pc.invert(valid_ids(ids.combine_chunks())).to_pylist(), INVALID_ID),
            (self._duplicated(batch), DUPLICATE_ID),
            ([False] * len(batch) if self.fix_invalid_utf8 else not_utf8, INVALID_UTF8),
            (failed, TEMPLATE_ERROR),
            ([not t for t in texts], EMPTY_TEXT),
        ]
        reasons = [next((r for flags, r in checks if flags[i]), None) for i in range(len(batch))]
        if self.fix is not None:
            self._apply_fix(batch, texts, reasons)
        # The raw render is only kept for quarantined rows, so only they pay for it.
        keep_raw = [
            self.template.render({c: v[i] for c, v in columns.items()}, clean=False) if r else None
            for i, r in enumerate(reasons)
        ]
        out = batch.select([self.id_column])
        out = out.append_column(TEXT, pa.array(texts, pa.string()))
        out = out.append_column(RAW, pa.array(keep_raw, pa.string()))
        hashes = [None if r else content_hash(t) for t, r in zip(texts, reasons, strict=True)]
        out = out.append_column(HASH, pa.array(hashes, pa.string()))
        return out.append_column(REASON, pa.array(reasons, pa.string()))

    def _apply_fix(self, batch: pa.Table, texts: list, reasons: list) -> None:
        """Render the fixable rows with the fix template; clear the reason (and set the text) of
        each row it gives a text. Changes `texts` and `reasons` in place."""
        rows = [i for i, r in enumerate(reasons) if r in TEMPLATE_FIXABLE]
        if not rows:
            return
        columns, not_utf8 = text_columns(batch.take(pa.array(rows)), self.fix.columns)
        fixed, failed = self.fix.render_rows(columns, len(rows))
        for j, i in enumerate(rows):
            if fixed[j] and not failed[j] and (self.fix_invalid_utf8 or not not_utf8[j]):
                texts[i], reasons[i] = fixed[j], None

    def _duplicated(self, batch: pa.Table) -> np.ndarray:
        flags = np.zeros(len(batch), dtype=bool)
        if not self.duplicate_rows or PATH not in batch.column_names:
            return flags
        paths = batch.column(PATH).to_numpy(zero_copy_only=False)
        rows = batch.column(ROW).to_numpy()
        for path in np.unique(paths):
            dup = self.duplicate_rows.get(path)
            if dup is not None:
                mine = paths == path
                flags[mine] = np.isin(rows[mine], dup)
        return flags


def prepare_unit(
    fs: pafs.FileSystem,
    unit: Unit,
    columns: list[str],
    prepare: PrepareText,
    seconds: dict | None = None,
) -> pa.Table:
    """Read one unit's rows and run `prepare` on them, with each row's file and row index (what
    the duplicate rule needs); `seconds` gets the read and the prepare time (embed/ledger.py)."""
    start = time.perf_counter()
    t = read_unit(fs, unit, columns)
    read = time.perf_counter()
    rows = np.arange(unit.file_row, unit.file_row + len(t), dtype=np.int64)
    t = t.append_column(ROW, pa.array(rows))
    t = t.append_column(PATH, pa.array([unit.path] * len(t), pa.string()))
    t = prepare(t)
    if seconds is not None:
        seconds.update(read_s=read - start, prepare_s=time.perf_counter() - read)
    return t


class PrepareUnits:
    """Read each unit's row range (projected to the job's columns) and run PrepareText on it.

    Args:
        filesystem: the input filesystem (pyarrow filesystems pickle, S3 included).
        columns: id column + template columns.
        template, id_column, duplicate_rows, fix_template, fix_invalid_utf8: as for
            PrepareText.
        previous: `--previous` runs: incremental.Previous.stage_args(); a unit then carries its
            plan_carry entry under "carry", and unchanged rows get last night's embedding.
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        columns: list[str],
        template: str,
        id_column: str,
        duplicate_rows: dict | None = None,
        previous: dict | None = None,
        fix_template: str | None = None,
        fix_invalid_utf8: bool = False,
    ):
        self.fs = filesystem
        self.columns = columns
        self.prepare = PrepareText(
            template, id_column, duplicate_rows, fix_template, fix_invalid_utf8
        )
        self.previous = previous

    def __call__(self, units: pa.Table) -> pa.Table:
        from fashion_batch.embed.incremental import carry

        out, notes = [], []
        for spec in units.to_pylist():
            plan = spec.pop("carry", None)
            unit = Unit(**spec)
            notes.append({})
            t = prepare_unit(self.fs, unit, self.columns, self.prepare, notes[-1])
            if self.previous is not None:
                start = time.perf_counter()  # reading last night's vectors counts as reading
                carried, delta = carry(self.previous, plan, t.column(HASH).to_pylist())
                t = t.append_column(CARRIED, carried).append_column(
                    DELTA, pa.array(delta, pa.string())
                )
                notes[-1]["read_s"] += time.perf_counter() - start
            out.append(pack(unit.index, t))
        return ledger.attach(packed_table(out), notes)
