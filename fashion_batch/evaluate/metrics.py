"""Retrieval metrics (NDCG@k, MRR@k, Recall@k) and ranking with a model.

Relevance is binary: a listing is relevant to a query or it is not. Every metric is a pure numpy
function of one `hits` matrix, `hits[q, i]` = "the i-th ranked document of query q is relevant",
plus each query's number of relevant documents; ranking (`top_k`) is separate, so the metrics are
checked against hand-computed values without a model.

Two corpora are evaluated the same way:

* `run(EvaluateConfig)`: the catalog's listing texts (rendered and cleaned like `embed` does) are
  the corpus and `queries.jsonl` gives each query's relevant listing ids;
* `evaluate_triplets(model, anchors, positives)`: held-out triplets, used by `train` before and
  after fine-tuning. The corpus is every distinct positive; the queries are the distinct anchors,
  and an anchor's relevant set is every positive it was paired with.

Documents are ranked by the model's own similarity function (`model.similarity`: dot product for
the seed model, cosine for MiniLM), so the numbers describe the search users will actually run.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

QUERY_CHUNK = 256  # queries scored at once: bounds the (chunk, n_docs) score matrix


# ---------------------------------------------------------------------------- metrics


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first; ties go to the lower index.

    Args:
        scores: (n_queries, n_docs) similarity scores.
        k: how many to keep; capped at n_docs.

    Returns:
        (n_queries, min(k, n_docs)) document indices.
    """
    n_docs = scores.shape[1]
    k = min(k, n_docs)
    if k == 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    if k < n_docs:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (n_queries, k), unordered
    else:
        candidates = np.tile(np.arange(n_docs), (scores.shape[0], 1))  # (n_queries, n_docs)
    cand_scores = np.take_along_axis(scores, candidates, axis=1)  # (n_queries, k)
    # lexsort sorts by the last key first: score descending, then index ascending.
    order = np.lexsort((candidates, -cand_scores), axis=1)  # (n_queries, k)
    return np.take_along_axis(candidates, order, axis=1)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))  # (k,): 1/log2(rank + 1) for ranks 1..k


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG@k per query: DCG of the ranking over DCG of a perfect ranking.

    Args:
        hits: (n_queries, >= k) bool, hits[q, i] = i-th ranked document is relevant.
        n_relevant: (n_queries,) relevant documents per query (all of them, not only the top k).
        k: cutoff.

    Returns:
        (n_queries,) float64 in [0, 1]; 0 for a query without relevant documents.
    """
    hits = hits[:, :k].astype(np.float64)  # (n_queries, k')
    disc = _discounts(k)  # (k,)
    dcg = hits @ disc[: hits.shape[1]]  # (n_queries,)
    ideal_cdf = np.concatenate([[0.0], np.cumsum(disc)])  # (k + 1,): ideal DCG with j relevant
    idcg = ideal_cdf[np.minimum(n_relevant, k)]  # (n_queries,)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def mrr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Reciprocal rank of the first relevant document within the top k (0 when none) per query.

    Args:
        hits: (n_queries, >= k) bool.
        k: cutoff.

    Returns:
        (n_queries,) float64.
    """
    hits = hits[:, :k]  # (n_queries, k')
    found = hits.any(axis=1)  # (n_queries,)
    first = hits.argmax(axis=1)  # (n_queries,): 0-based rank of the first hit (0 if none)
    return np.where(found, 1.0 / (first + 1), 0.0)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Share of a query's relevant documents found in its top k (0 when it has none).

    Args:
        hits: (n_queries, >= k) bool.
        n_relevant: (n_queries,) int.
        k: cutoff.

    Returns:
        (n_queries,) float64 in [0, 1].
    """
    found = hits[:, :k].sum(axis=1).astype(np.float64)  # (n_queries,)
    n = n_relevant.astype(np.float64)  # (n_queries,)
    return np.divide(found, n, out=np.zeros_like(found), where=n > 0)


def ir_metrics(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, float]:
    """Mean NDCG@k, MRR@k, Recall@k over queries, keyed like `{"ndcg@10": ...}`."""
    if len(hits) == 0:
        return {f"ndcg@{k}": 0.0, f"mrr@{k}": 0.0, f"recall@{k}": 0.0, "queries": 0}
    return {
        f"ndcg@{k}": float(ndcg_at_k(hits, n_relevant, k).mean()),
        f"mrr@{k}": float(mrr_at_k(hits, k).mean()),
        f"recall@{k}": float(recall_at_k(hits, n_relevant, k).mean()),
        "queries": len(hits),
    }


# ---------------------------------------------------------------------------- ranking with a model


def rank_and_score(
    model, queries: list[str], docs: list[str], relevant: list[set[int]], k: int, batch_size: int
) -> dict[str, float]:
    """Embed queries and docs, rank docs per query by `model.similarity`, return `ir_metrics`.

    Args:
        model: a SentenceTransformer.
        queries: n_queries texts.
        docs: n_docs texts (the corpus).
        relevant: per query, the indices into `docs` of its relevant documents (non-empty).
        k: cutoff.
        batch_size: texts per forward pass.
    """
    encode = dict(batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    was_training = model.training
    model.eval()
    try:
        doc_emb = model.encode(docs, **encode)  # (n_docs, dim)
        query_emb = model.encode(queries, **encode)  # (n_queries, dim)
    finally:
        model.train(was_training)
    ranked = []
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = query_emb[start : start + QUERY_CHUNK]  # (chunk, dim)
        scores = model.similarity(chunk, doc_emb).float().cpu().numpy()  # (chunk, n_docs)
        ranked.append(top_k(scores, k))  # (chunk, k')
    ranked_idx = np.concatenate(ranked) if ranked else np.zeros((0, 0), np.int64)  # (n_q, k')
    hits = np.array(
        [[int(d) in rel for d in row] for row, rel in zip(ranked_idx, relevant, strict=True)],
        dtype=bool,
    ).reshape(len(queries), -1)  # (n_queries, k')
    n_relevant = np.array([len(r) for r in relevant], dtype=np.int64)  # (n_queries,)
    return ir_metrics(hits, n_relevant, k)


def evaluate_triplets(
    model, anchors: list[str], positives: list[str], k: int = 10, batch_size: int = 64
) -> dict[str, float]:
    """IR metrics on held-out (anchor, positive) pairs: each distinct anchor is a query, every
    distinct positive of the split is the corpus, and an anchor's relevant documents are all the
    positives it was paired with (so a repeated anchor is one query, not several that each count
    the other's positive as a miss)."""
    doc_index: dict[str, int] = {}
    relevant: dict[str, set[int]] = {}
    for anchor, positive in zip(anchors, positives, strict=True):
        d = doc_index.setdefault(positive, len(doc_index))
        relevant.setdefault(anchor, set()).add(d)
    return rank_and_score(
        model, list(relevant), list(doc_index), list(relevant.values()), k, batch_size
    )
