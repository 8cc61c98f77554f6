"""Training data: triplets read and checked on the driver, split by anchor, and the per-rank
view of a global batch that the workers train on."""

from __future__ import annotations

import hashlib
import json
import logging

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.json as pajson

from fashion_batch.errors import InputError
from fashion_batch.io.fs import filesystem
from fashion_batch.train.config import COLUMNS, SEED_COLUMNS

log = logging.getLogger(__name__)


def read_triplets(uri: str, flag: str = "--triplets") -> dict[str, list[str]]:
    """Read (anchor, positive, negative) columns from Parquet (file or dir) or JSONL.

    Rows with a null or blank text in any column are dropped. Raises InputError naming the path
    and the column when the input is missing, unreadable or lacks a column.
    """
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{flag} {uri}: no such file or directory")
    try:
        if info.type == pafs.FileType.File and path.endswith((".jsonl", ".json")):
            with fs.open_input_stream(path) as f:
                table = pajson.read_json(f)
        else:
            table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{flag} {uri}: not readable as Parquet or JSONL: {e}") from e
    names = table.schema.names
    if not set(COLUMNS) <= set(names) and set(SEED_COLUMNS) <= set(names):
        table = table.select(list(SEED_COLUMNS)).rename_columns(list(COLUMNS))
    for column in COLUMNS:
        if column not in table.schema.names:
            raise InputError(
                f"{flag} {uri}: missing column {column!r} (has: {', '.join(names)}); "
                "needs anchor, positive, negative (or sentence_0, sentence_1, sentence_2)"
            )
        if not pa.types.is_string(table.schema.field(column).type) and not pa.types.is_large_string(
            table.schema.field(column).type
        ):
            raise InputError(
                f"{flag} {uri}: column {column!r} is {table.schema.field(column).type}, "
                "needs strings"
            )
    data = table.select(list(COLUMNS)).to_pydict()
    keep = [
        i
        for i in range(table.num_rows)
        if all(data[c][i] is not None and data[c][i].strip() for c in COLUMNS)
    ]
    if len(keep) < table.num_rows:
        log.warning(
            "%s %s: dropped %d rows with an empty text", flag, uri, table.num_rows - len(keep)
        )
    if not keep:
        raise InputError(f"{flag} {uri}: no triplet with three non-empty texts")
    return {c: [data[c][i] for i in keep] for c in COLUMNS}


def split_triplets(
    data: dict[str, list[str]], eval_split: float, seed: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, eval): a seeded share of the distinct anchors, with all their rows, is held out,
    so no query is both trained on and evaluated."""
    import numpy as np

    anchors = list(dict.fromkeys(data["anchor"]))
    n_eval = round(eval_split * len(anchors))
    if eval_split > 0 and len(anchors) > 1:
        n_eval = min(max(n_eval, 1), len(anchors) - 1)
    rng = np.random.default_rng(seed)
    held_out = {anchors[i] for i in rng.permutation(len(anchors))[:n_eval]}
    is_eval = [a in held_out for a in data["anchor"]]

    def pick(held: bool) -> dict[str, list[str]]:
        return {c: [v for v, e in zip(data[c], is_eval, strict=True) if e == held] for c in COLUMNS}

    return pick(False), pick(True)


def shard(global_batch: list[int], rank: int, world_size: int) -> list[int]:
    """Rank r's rows of one global batch: the r-th contiguous slice, in order. All-gathering
    the slices in rank order gives back the global batch, as one process would see it."""
    per_rank = len(global_batch) // world_size
    return global_batch[rank * per_rank : (rank + 1) * per_rank]


class Rows:
    """The little of a `datasets.Dataset` that `NoDuplicatesBatchSampler` reads: column names,
    length, row dicts (a real Dataset would be built and fingerprinted on every worker)."""

    def __init__(self, columns: dict[str, list[str]]):
        self.columns = columns
        self.column_names = list(columns)

    def __len__(self) -> int:
        return len(self.columns[self.column_names[0]])

    def __getitem__(self, index: int) -> dict[str, str]:
        return {c: values[index] for c, values in self.columns.items()}


def digest(obj) -> str:
    """A short, stable hash of JSON-able data: what `run.json` records of the training data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def global_batch_sampler(train: dict[str, list[str]], batch_size: int, seed: int):
    """The sampler of GLOBAL batches: every rank builds the same one (same rows, batch size and
    seed), so all ranks draw identical batches and `shard` gives each its slice. NO_DUPLICATES
    and at most one triplet per product in a batch (train/batches.py)."""
    from fashion_batch.train.batches import product_batch_sampler, product_column

    rows = Rows({**train, "product": product_column(train["positive"])})
    return product_batch_sampler(rows, batch_size, seed)


def count_global_batches(train: dict[str, list[str]], batch_size: int, seed: int) -> int:
    """Global batches the workers' first epoch draws: the same sampler, run once on the driver.

    A row goes in a batch only if it shares no text and no product with the rows already there,
    and `drop_last` drops a batch it cannot fill, so repeated texts (one query with several
    listings, one negative shared by many rows) and products leave fewer batches than
    rows // batch_size, down to none.
    """
    sampler = global_batch_sampler(train, batch_size, seed)
    sampler.set_epoch(0)
    return sum(1 for _ in sampler)


def triplets_dataset(columns: dict, name: str):
    """The triplets as a `datasets.Dataset` (what sentence-transformers' trainer and model card
    take), with a fingerprint of ours: `Dataset.from_dict` would hash the table with dill, whose
    global-name scan disassembles code to stdout, and inside a Ray Train worker that listing
    reaches the user's console."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(pa.table(columns)), fingerprint=f"fashion-batch-{name}")
