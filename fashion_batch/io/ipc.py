"""Arrow IPC: a table as one bytes value, so it travels through Ray Data as a single row."""

from __future__ import annotations

import pyarrow as pa


def to_ipc(table: pa.Table) -> bytes:
    """The table (schema included) as Arrow IPC stream bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(payload: bytes) -> pa.Table:
    """The table `to_ipc` packed."""
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
