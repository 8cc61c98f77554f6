"""Retrieval evaluation through sentence-transformers' `InformationRetrievalEvaluator`.

`train` scores the base, the model at step 0 and every epoch with one `Retrieval`, and publishes
(or refuses, the quality gate) on its NDCG@10. Two ways to build one:

* `from_catalog`: shopper queries against the WHOLE catalog (`sample-data`'s queries.jsonl and
  catalog/, or any queries with relevant listing ids): what users get from search;
* `from_triplets`: held-out (anchor, positive, negative) rows: each distinct anchor is a query,
  every distinct positive and negative of the split is the corpus, and an anchor's relevant
  documents are all the positives it was paired with.

Ranking is by the model's own similarity function (`model.similarity_fn_name`), the one its
users get: cosine for MiniLM, dot product for the seed architecture (which `train` ends in a
Normalize module, so that its dot product ranks like the cosine MNRL trains and the head
initialisation keeps equal to the base's at step 0). Cosine and dot-product NDCG@10 are both
recorded beside it (`cosine_ndcg@10`, `dot_ndcg@10`): where they differ, vector lengths rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

K = 10
# The metrics kept per evaluation: (our key, the evaluator's key without the score function).
METRICS = (
    ("ndcg@10", "ndcg@10"),
    ("mrr@10", "mrr@10"),
    ("recall@10", "recall@10"),
    ("recall@100", "recall@100"),
    ("map@100", "map@100"),
)
PRIMARY = "ndcg@10"  # what the gate and the best-epoch choice compare


@dataclass
class Retrieval:
    """Queries, corpus and relevance judgements, all keyed by string ids.

    Args:
        queries: query id → text.
        corpus: document id → text.
        relevant: query id → ids of its relevant documents (queries without any are dropped).
        source: what the set is, for the metrics file ("catalog" or "triplets").
    """

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    source: str

    def __post_init__(self):
        self.relevant = {q: set(r) for q, r in self.relevant.items() if r and q in self.queries}
        self.queries = {q: t for q, t in self.queries.items() if q in self.relevant}

    def score(self, model, batch_size: int = 64, corpus_embeddings=None) -> dict[str, float]:
        """NDCG@10, MRR@10, Recall@10/100 and MAP@100 of `model` ranking by its own similarity
        function, plus cosine and dot-product NDCG@10.

        The model is put in eval mode for the encoding (no dropout) and restored afterwards.
        `corpus_embeddings`: vectors already made for the corpus, row i for the i-th key of
        `corpus` (anything the evaluator can slice into (chunk, dim) tensors); then only the
        queries are encoded, and the corpus texts are never read.
        """
        from sentence_transformers.sentence_transformer.evaluation import (
            InformationRetrievalEvaluator,
        )

        own = model.similarity_fn_name or "cosine"
        evaluator = self.evaluator(batch_size=batch_size, own=(own, model.similarity))
        was_training = model.training
        model.eval()
        quiet = logging.getLogger(InformationRetrievalEvaluator.__module__)
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # its per-metric INFO lines; `train` reports its own
        try:
            raw = evaluator(model, corpus_embeddings=corpus_embeddings)
        finally:
            model.train(was_training)
            quiet.setLevel(level)
        out = {ours: float(raw[f"{own}_{theirs}"]) for ours, theirs in METRICS}
        out["cosine_ndcg@10"] = float(raw["cosine_ndcg@10"])
        out["dot_ndcg@10"] = float(raw["dot_ndcg@10"])
        out["similarity"] = own
        out["queries"] = len(self.queries)
        out["corpus"] = len(self.corpus)
        return out

    def evaluator(self, name: str = "", batch_size: int = 64, own=None):
        """sentence-transformers' `InformationRetrievalEvaluator` over this set, scoring by
        cosine and dot product (and `own`, a (name, function) pair, when it is neither).
        `train`'s model card lists one per model scored, named after it."""
        from sentence_transformers.sentence_transformer.evaluation import (
            InformationRetrievalEvaluator,
        )
        from sentence_transformers.util import cos_sim, dot_score

        functions = {"cosine": cos_sim, "dot": dot_score}
        if own is not None:
            functions.setdefault(*own)
        return InformationRetrievalEvaluator(
            self.queries,
            self.corpus,
            self.relevant,
            mrr_at_k=[K],
            ndcg_at_k=[K],
            accuracy_at_k=[1],
            precision_recall_at_k=[10, 100],
            map_at_k=[100],
            batch_size=batch_size,
            write_csv=False,
            score_functions=functions,
            name=name,
        )


def from_triplets(anchors: list[str], positives: list[str], negatives: list[str]) -> Retrieval:
    """Held-out triplets as a retrieval set; a repeated anchor is one query with several
    relevant documents, and a text that is some anchor's positive stays relevant to it even if
    it is another row's negative."""
    doc_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    query_ids: dict[str, str] = {}
    for anchor, positive, negative in zip(anchors, positives, negatives, strict=True):
        q = query_ids.setdefault(anchor, f"q{len(query_ids)}")
        for text in (positive, negative):
            doc_ids.setdefault(text, f"d{len(doc_ids)}")
        relevant.setdefault(q, set()).add(doc_ids[positive])
    return Retrieval(
        queries={q: a for a, q in query_ids.items()},
        corpus={d: t for t, d in doc_ids.items()},
        relevant=relevant,
        source="triplets",
    )


def from_catalog(queries: list[dict], ids: list, texts: list[str]) -> Retrieval:
    """Queries (`{"query_id"?, "query", "relevant_ids"}`) against every listing of the catalog.

    Relevant ids missing from the catalog (or quarantined there) are ignored; a query left with
    none is dropped (the count of those is the caller's to report).
    """
    corpus = {str(i): t for i, t in zip(ids, texts, strict=True)}
    qs, relevant = {}, {}
    for n, q in enumerate(queries):
        qid = str(q.get("query_id", f"q{n}"))
        qs[qid] = q["query"]
        relevant[qid] = {str(r) for r in q["relevant_ids"] if str(r) in corpus}
    return Retrieval(queries=qs, corpus=corpus, relevant=relevant, source="catalog")
