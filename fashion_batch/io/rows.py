"""Read a few rows of one column from a Parquet file, touching only the row groups that hold
them (a published part keeps each unit as one row group: embed/publish.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def take_rows(fs: pafs.FileSystem, path: str, rows, column: str) -> pa.Array:
    """`column`'s values at the file-wide row indices `rows`, in that order."""
    rows = np.asarray(rows, dtype=np.int64)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)])  # (G + 1,)
        if len(rows) and (rows.min() < 0 or rows.max() >= starts[-1]):
            raise IndexError(f"{path}: rows outside 0..{starts[-1] - 1}")
        group_of = np.searchsorted(starts, rows, side="right") - 1  # (n,)
        groups = np.unique(group_of)
        table = pf.read_row_groups(groups.tolist(), columns=[column])
    # where each wanted group starts inside the concatenation of the groups read
    base = np.concatenate([[0], np.cumsum([sizes[g] for g in groups])])[:-1]
    pos = base[np.searchsorted(groups, group_of)] + rows - starts[group_of]
    return table.column(0).combine_chunks().take(pa.array(pos))
