"""Retrieval metrics of the vectors an embed output stores, not of a fresh encoding.

What was shipped is scored: the part files' embeddings, whatever backend made them (int8, ONNX,
fp16 on a GPU), are the corpus, and only the queries are encoded, by the model the output was
made with in torch fp32 on this process. Scoring goes through the same `Retrieval` (sentence-
transformers' `InformationRetrievalEvaluator`) that `train` gates on, with the stored vectors
passed in as its corpus embeddings. Two callers share it: `fashion-batch evaluate --embeddings`
and embed's quality gate (embed/gate.py), which scores the probe queries before the manifest.

Memory: the corpus ids are held as strings (the evaluator's keys); the vectors are read one part
file at a time, as the evaluator asks for each chunk of the corpus (`PartVectors`).
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.layout import embedding_files, read_manifest
from fashion_batch.errors import InputError
from fashion_batch.io.fs import filesystem, redact


class PartVectors:
    """The embeddings of a list of part files as one (rows, dim) matrix that can be sliced.

    Row i is the i-th row of the parts taken in order. `InformationRetrievalEvaluator` slices its
    corpus embeddings chunk by chunk in order, so only the parts a chunk covers are read, and
    the last one read is kept for the next chunk.

    Args:
        fs: the output's filesystem.
        paths: part files, in order.
        id_column: the id column name.
        device: where the slices go (the query embeddings' device).
    """

    def __init__(self, fs: pafs.FileSystem, paths: list[str], id_column: str, device=None):
        self.fs, self.paths, self.device = fs, paths, device
        self.ids: list = []
        self.starts: list[int] = []
        for path in paths:
            with fs.open_input_file(path) as f:
                ids = pq.read_table(f, columns=[id_column]).column(0).to_pylist()
            self.starts.append(len(self.ids))
            self.ids += ids
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _part(self, i: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != i:
            with self.fs.open_input_file(self.paths[i]) as f:
                emb = pq.read_table(f, columns=["embedding"]).column(0).combine_chunks()
            flat = emb.flatten().to_numpy(zero_copy_only=False)  # (n * D,)
            self._cached = (i, flat.reshape(-1, emb.type.list_size))  # (n, D)
        return self._cached[1]

    def __getitem__(self, rows: slice):
        import torch

        start, stop, _ = rows.indices(len(self))
        pieces = []
        for i, first in enumerate(self.starts):
            last = self.starts[i + 1] if i + 1 < len(self.starts) else len(self)
            if last <= start or first >= stop or last == first:
                continue
            part = self._part(i)  # (n_i, D)
            pieces.append(part[max(start, first) - first : min(stop, last) - first])
        out = torch.from_numpy(np.concatenate(pieces).astype(np.float32, copy=False))  # (m, D)
        return out.to(self.device) if self.device is not None else out


def part_paths(output: str, files: list[str]) -> list[str]:
    """The embedding part files among an output's `files` (its quarantine parts left out)."""
    return [posixpath.join(output, f) for f in embedding_files(files)]


def score_stored(
    model, queries: list[dict], fs: pafs.FileSystem, paths: list[str], id_column: str
) -> dict:
    """NDCG@10, MRR@10, Recall@10/100, MAP@100 of `queries` against the stored vectors.

    Args:
        model: the SentenceTransformer the vectors were made with (encodes the queries).
        queries: `{"query_id"?, "query", "relevant_ids"}` dicts (evaluate.read_queries).
        fs, paths: the output's filesystem and its embedding part files.
        id_column: the id column of the parts.

    Returns the metrics of `Retrieval.score`, plus `skipped_queries`: queries none of whose
    relevant ids is in the output (missing from the catalog or quarantined).
    """
    from fashion_batch.evaluate.retrieval import from_catalog

    vectors = PartVectors(fs, paths, id_column, device=model.device)
    if not len(vectors):
        raise InputError("the output holds no embedded listing to score")
    retrieval = from_catalog(queries, vectors.ids, [""] * len(vectors))  # texts are never read
    if not retrieval.queries:
        raise InputError("no query has a relevant id among the embedded listings")
    metrics = retrieval.score(model, corpus_embeddings=vectors)
    metrics["skipped_queries"] = len(queries) - len(retrieval.queries)
    return metrics


def score_vectors(snapshot, query_vectors: np.ndarray, queries: list[dict], sim: str) -> dict:
    """`score_stored`'s metrics at 10 (NDCG, MRR, Recall) from query vectors already made, so
    that no model is loaded: each query's top 10 over the snapshot's parts, ranked by the
    model's similarity function `sim`, one part in memory at a time (evaluate/drift.py).

    Args:
        snapshot: a Snapshot (its `files` and `id_column` are all that is read).
        query_vectors: (n_queries, D), row i for queries[i].
        queries: `{"query", "relevant_ids"}` dicts (evaluate.read_queries).
        sim: snapshots.similarity_name of the model.
    """
    from fashion_batch.evaluate.drift import K, snapshot_top_ids
    from fashion_batch.evaluate.metrics import ir_metrics

    present = set()
    for name in snapshot.parts:
        ids = snapshot._read(name, [snapshot.manifest["id_column"]]).column(0)
        present.update(str(i) for i in ids.to_pylist())
    if not present:
        raise InputError("the output holds no embedded listing to score")
    relevant = [{str(r) for r in q["relevant_ids"]} & present for q in queries]
    scored = [i for i, r in enumerate(relevant) if r]
    if not scored:
        raise InputError("no query has a relevant id among the embedded listings")
    top = snapshot_top_ids(snapshot, np.asarray(query_vectors)[scored], sim, K)
    hits = np.array(
        [
            [str(d) in relevant[i] for d in row] + [False] * (K - len(row))
            for i, row in zip(scored, top, strict=True)
        ],
        dtype=bool,
    ).reshape(len(scored), K)  # (n_scored, K)
    n_relevant = np.array([len(relevant[i]) for i in scored], dtype=np.int64)  # (n_scored,)
    metrics = ir_metrics(hits, n_relevant, K)
    metrics["skipped_queries"] = len(queries) - len(scored)
    metrics["similarity"] = sim
    return metrics


def open_output(uri: str, flag: str = "--embeddings") -> tuple[pafs.FileSystem, str, dict]:
    """The filesystem, path and manifest of a finished embed output (no manifest: exit 2)."""
    fs, path = filesystem(uri)
    try:
        manifest = read_manifest(fs, path)
    except (OSError, ValueError) as e:
        raise InputError(f"{flag} {redact(uri)}: cannot read manifest.json: {e}") from e
    if manifest is None:
        raise InputError(
            f"{flag} {redact(uri)}: no manifest.json (not an embed output, or the run did not "
            "finish)"
        )
    return fs, path, manifest


def check_model(model: str | None, manifest: dict, where: str) -> str:
    """The model to encode queries with: `model`, or the manifest's when None; its digest must
    be the one the manifest recorded (vectors of another model score meaninglessly)."""
    from fashion_batch.encoders.models import resolve_model
    from fashion_batch.encoders.trust import model_digest

    made_with = manifest.get("model", {})
    chosen = model if model is not None else made_with.get("name")
    if not chosen:
        raise InputError(f"{where}: the manifest names no model; pass --model")
    got = model_digest(resolve_model(chosen))
    want = made_with.get("sha256")
    if want != got:
        raise InputError(
            f"--model {chosen}: its files (sha256 {got[:12]}) differ from the model the "
            f"embeddings in {where} were made with ({made_with.get('name')}, "
            f"sha256 {str(want)[:12]}); use that model"
        )
    return chosen
