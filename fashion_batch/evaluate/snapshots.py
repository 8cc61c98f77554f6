"""A finished embed output read as a snapshot to compare with another (evaluate/drift.py).

What a comparison needs from an output, without holding all its vectors in memory: the id →
content-hash index that incremental runs already keep beside each part file (embed/state.py,
`_state/hashes/`), the vectors of chosen rows, a pass over the parts one at a time, and the model
that made the vectors (to encode queries the way the vectors were encoded).
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.layout import embedding_files
from fashion_batch.embed.state import read_hashes
from fashion_batch.errors import InputError
from fashion_batch.io.fs import redact
from fashion_batch.io.rows import take_rows


@dataclass
class Snapshot:
    """One embed output: where it is, its manifest and its part files (OUTPUT-relative)."""

    uri: str
    fs: pafs.FileSystem
    path: str
    manifest: dict

    @property
    def parts(self) -> list[str]:
        return embedding_files(self.manifest["files"])

    def index(self) -> pa.Table:
        """(id, content_hash, part, row): every embedded row, `part` indexing `parts`."""
        tables = []
        for i, name in enumerate(self.parts):
            try:
                t = read_hashes(self.fs, self.path, name)
            except (OSError, pa.ArrowException) as e:
                what = f"{self.uri}: cannot read the content hashes of {name}"
                raise InputError(f"{what}: {e}") from e
            tables.append(
                t.append_column("part", pa.array(np.full(len(t), i, np.int32))).append_column(
                    "row", pa.array(np.arange(len(t), dtype=np.int32))
                )
            )
        if not tables:
            return pa.table(
                {
                    "id": pa.array([], pa.int64()),
                    "content_hash": pa.array([], pa.string()),
                    "part": pa.array([], pa.int32()),
                    "row": pa.array([], pa.int32()),
                }
            )
        return pa.concat_tables(tables)

    def _read(self, name: str, columns: list[str]) -> pa.Table:
        with self.fs.open_input_file(posixpath.join(self.path, name)) as f:
            return pq.read_table(f, columns=columns)

    def vectors(self, parts: list[int], rows: list[int]) -> np.ndarray:
        """The vectors at (part, row) pairs, in the order given: (n, D) float32."""
        dim = int(self.manifest["dim"])
        out = np.zeros((len(parts), dim), dtype=np.float32)  # (n, D)
        wanted = defaultdict(list)
        for i, (part, row) in enumerate(zip(parts, rows, strict=True)):
            wanted[part].append((i, row))
        for part, pairs in wanted.items():
            path = posixpath.join(self.path, self.parts[part])
            taken = take_rows(self.fs, path, [r for _, r in pairs], "embedding")
            flat = taken.flatten().to_numpy(zero_copy_only=False)  # (k * D,)
            out[[i for i, _ in pairs]] = flat.reshape(len(pairs), dim)
        return out

    def iter_parts(self) -> Iterator[tuple[pa.Array, np.ndarray]]:
        """(ids, vectors (n, D) float32) of each part file in turn, one in memory at a time."""
        id_column = self.manifest["id_column"]
        for name in self.parts:
            t = self._read(name, [id_column, "embedding"])
            emb = t.column("embedding").combine_chunks()
            flat = emb.flatten().to_numpy(zero_copy_only=False)
            yield t.column(id_column).combine_chunks(), flat.reshape(len(t), emb.type.list_size)

    def model_dir(self) -> str:
        """The model that made the vectors: its recorded path, else its name resolved here; its
        digest must equal the manifest's (vectors of another model would make the queries lie)."""
        from fashion_batch.encoders.models import resolve_model
        from fashion_batch.encoders.trust import model_digest

        model = self.manifest["model"]
        path = model.get("path")
        if not path or not Path(path).is_dir():
            path = resolve_model(model["name"])
        if model_digest(path) != model["sha256"]:
            raise InputError(
                f"{self.uri}: the model it was made with ({model['name']}, sha256 "
                f"{model['sha256'][:12]}) is not at {path} any more (its files differ)"
            )
        return path


def open_snapshot(uri: str, flag: str) -> Snapshot:
    """A finished output (it has a manifest); InputError naming `flag` otherwise."""
    from fashion_batch.evaluate.stored import open_output

    fs, path, manifest = open_output(uri, flag)
    return Snapshot(redact(uri), fs, path, manifest)


def similarity_name(model_dir: str) -> str:
    """The model's own similarity function (sentence-transformers' config; cosine if unset)."""
    config = Path(model_dir) / "config_sentence_transformers.json"
    if config.is_file():
        return json.loads(config.read_text()).get("similarity_fn_name") or "cosine"
    return "cosine"


def similarity(name: str, queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """(n_queries, n_docs) scores by sentence-transformers' similarity function `name`."""
    q, d = queries.astype(np.float64), docs.astype(np.float64)  # (Q, D), (n, D)
    if name == "dot":
        return q @ d.T
    if name == "euclidean":
        squared = (q**2).sum(1)[:, None] + (d**2).sum(1)[None, :] - 2 * q @ d.T  # (Q, n)
        return -np.sqrt(np.maximum(squared, 0))
    if name == "manhattan":
        return -np.stack([np.abs(d - row).sum(1) for row in q])  # (Q, n), one query at a time
    return unit(q) @ unit(d).T


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
