"""Retrieval evaluation: metrics.py (NDCG/MRR/Recall and ranking, used by `train` too) and
job.py (`fashion-batch evaluate` over a catalog and a query set)."""

from fashion_batch.evaluate.job import (
    EvaluateConfig,
    read_catalog_texts,
    read_queries,
    run,
    summary,
)
from fashion_batch.evaluate.metrics import (
    evaluate_triplets,
    ir_metrics,
    mrr_at_k,
    ndcg_at_k,
    rank_and_score,
    recall_at_k,
    top_k,
)

__all__ = [
    "EvaluateConfig",
    "evaluate_triplets",
    "ir_metrics",
    "mrr_at_k",
    "ndcg_at_k",
    "rank_and_score",
    "read_catalog_texts",
    "read_queries",
    "recall_at_k",
    "run",
    "summary",
    "top_k",
]
