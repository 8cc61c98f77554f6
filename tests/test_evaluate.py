"""evaluate: metric functions against hand-computed values, ranking, and `evaluate.run` on a tiny
catalog with the embed quarantine rules."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fashion_batch.errors import InputError
from fashion_batch.evaluate import (
    EvaluateConfig,
    evaluate_triplets,
    ir_metrics,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    run,
    top_k,
)
from fashion_batch.options import add_arguments, from_args

# ---------------------------------------------------------------------------- metrics by hand


def test_ndcg_hand_computed():
    hits = np.array(
        [
            [0, 1, 0],  # one relevant doc, found at rank 2: (1/log2 3) / 1
            [1, 0, 1],  # 3 relevant, found at ranks 1 and 3: (1 + 1/2) / (1 + 1/log2 3 + 1/2)
            [0, 0, 0],  # nothing found
            [1, 1, 0],  # 2 relevant, both on top: perfect
        ],
        dtype=bool,
    )
    n_relevant = np.array([1, 3, 2, 2])
    expected = [
        1 / math.log2(3),
        1.5 / (1 + 1 / math.log2(3) + 0.5),
        0.0,
        1.0,
    ]
    np.testing.assert_allclose(ndcg_at_k(hits, n_relevant, 3), expected, rtol=1e-12)


def test_ndcg_ideal_is_capped_at_k():
    # 5 relevant documents but k = 2: two hits on top is a perfect score.
    hits = np.array([[1, 1, 0, 0]], dtype=bool)
    assert ndcg_at_k(hits, np.array([5]), 2)[0] == pytest.approx(1.0)
    # Recall is still over all five.
    assert recall_at_k(hits, np.array([5]), 2)[0] == pytest.approx(0.4)


def test_mrr_hand_computed():
    hits = np.array([[0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=bool)
    np.testing.assert_allclose(mrr_at_k(hits, 3), [1 / 3, 1.0, 0.0, 0.5])
    # A hit past the cutoff does not count.
    np.testing.assert_allclose(mrr_at_k(hits, 2), [0.0, 1.0, 0.0, 0.5])


def test_recall_hand_computed():
    hits = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=bool)
    np.testing.assert_allclose(recall_at_k(hits, np.array([4, 2, 3]), 3), [0.5, 0.0, 1.0])
    assert recall_at_k(hits[:1], np.array([0]), 3)[0] == 0.0  # no relevant docs: 0, not NaN


def test_ir_metrics_are_means_keyed_by_k():
    hits = np.array([[1, 0], [0, 1]], dtype=bool)
    m = ir_metrics(hits, np.array([1, 1]), 2)
    assert m == {
        "ndcg@2": pytest.approx((1 + 1 / math.log2(3)) / 2),
        "mrr@2": pytest.approx(0.75),
        "recall@2": pytest.approx(1.0),
        "queries": 2,
    }


def test_top_k_orders_best_first_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 3, 2], [0, 1, 2]])
    assert top_k(scores, 10).shape == (2, 4)  # capped at the corpus size


# ---------------------------------------------------------------------------- ranking with a model


class OneHotModel:
    """Embeds text i of a fixed vocabulary as the i-th unit vector (dot-product similarity)."""

    training = False

    def __init__(self, vocab: dict[str, list[float]]):
        self.vocab = vocab

    def encode(self, texts, **kwargs):
        return torch.tensor([self.vocab[t] for t in texts])

    def similarity(self, a, b):
        return a @ b.T

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def test_evaluate_triplets_groups_repeated_anchors():
    model = OneHotModel(
        {
            "red": [1.0, 0.0, 0.0],
            "red dress": [0.9, 0.1, 0.0],
            "red skirt": [0.8, 0.0, 0.2],
            "blue": [0.0, 1.0, 0.0],
            "blue jeans": [0.1, 0.2, 0.9],  # ranked below both red docs for "blue"
        }
    )
    # "red" appears twice: one query whose relevant set is both red docs (a perfect ranking).
    pairs = (["red", "red", "blue"], ["red dress", "red skirt", "blue jeans"])
    m = evaluate_triplets(model, *pairs, k=10)
    assert m["queries"] == 2
    # "blue" scores red dress 0.1, red skirt 0.0, blue jeans 0.2: its positive is first.
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert m["mrr@10"] == pytest.approx(1.0)

    model.vocab["blue jeans"] = [0.0, 0.05, 0.9]  # now red dress (0.1) outranks it for "blue"
    m = evaluate_triplets(model, *pairs, k=10)
    assert m["mrr@10"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
    assert m["recall@10"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- evaluate.run

CATALOG = [
    # listing_id, title, description
    (1, "Red wool coat", "A long red coat for winter."),
    (2, "Blue denim jeans", "Straight leg jeans in a classic blue wash."),
    (3, "White leather sneakers", "Clean white trainers with a rubber sole."),
    (None, "Black boots", "orphan row without an id"),
    (4, "   ", None),  # empty text: skipped
    (2, "Green silk scarf", "a later duplicate of id 2: skipped"),
    (5, "Black leather boots", "Chunky combat boots with a lug sole."),
]


@pytest.fixture
def catalog(tmp_path):
    d = tmp_path / "catalog"
    d.mkdir()
    table = pa.table(
        {
            "listing_id": pa.array([r[0] for r in CATALOG], pa.int64()),
            "title": [r[1] for r in CATALOG],
            "description": [r[2] for r in CATALOG],
        }
    )
    pq.write_table(table.slice(0, 4), d / "part-0.parquet")
    pq.write_table(table.slice(4), d / "part-1.parquet")
    return d


@pytest.fixture
def queries(tmp_path):
    rows = [
        {"query_id": "q1", "query": "warm red winter coat", "relevant_ids": [1]},
        {"query_id": "q2", "query": "blue jeans", "relevant_ids": [2]},
        {"query_id": "q3", "query": "white sneakers", "relevant_ids": [3, 99]},  # 99: not listed
        {"query_id": "q4", "query": "chunky black boots", "relevant_ids": [5]},
        {"query_id": "q5", "query": "a scarf", "relevant_ids": [4, 98]},  # none in the catalog
    ]
    path = tmp_path / "queries.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_run_on_a_tiny_catalog(catalog, queries, minilm_dir):
    m = run(EvaluateConfig(model=minilm_dir, catalog=str(catalog), queries=str(queries), k=3))
    # Null id, empty text and the repeated id 2 are not in the corpus; q5 has nothing relevant.
    assert m["corpus"] == 4
    assert m["queries"] == 4 and m["skipped_queries"] == 1
    # MiniLM puts the obvious listing first for each of these queries.
    assert m["mrr@3"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx(1.0)
    assert m["recall@3"] == pytest.approx(1.0)


def test_run_with_k_past_the_corpus_is_recall_one(catalog, queries, minilm_dir):
    m = run(EvaluateConfig(model=minilm_dir, catalog=str(catalog), queries=str(queries)))
    assert set(m) >= {"ndcg@10", "mrr@10", "recall@10", "queries"}
    assert m["recall@10"] == pytest.approx(1.0)  # all 4 docs are in every top 10


def test_missing_catalog_names_the_path(tmp_path, queries):
    with pytest.raises(InputError, match="no-such-dir"):
        run(EvaluateConfig("builtin:minilm", str(tmp_path / "no-such-dir"), str(queries)))


def test_missing_column_names_the_column(catalog, queries):
    config = EvaluateConfig("builtin:minilm", str(catalog), str(queries), text_template="{brand}")
    with pytest.raises(InputError, match="missing column 'brand'"):
        run(config)
    with pytest.raises(InputError, match="missing column 'sku'"):
        run(EvaluateConfig("builtin:minilm", str(catalog), str(queries), id_column="sku"))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"query": "a", "relevant_ids": [1]}\nnot json\n', r"queries.jsonl:2: not JSON"),
        ('{"query": "a"}\n', r"queries.jsonl:1: needs a list field 'relevant_ids'"),
        ('{"relevant_ids": [1]}\n', r"queries.jsonl:1: needs a string field 'query'"),
        ("\n", "no queries"),
    ],
)
def test_bad_queries_name_the_file_and_line(catalog, tmp_path, content, message):
    path = tmp_path / "queries.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        run(EvaluateConfig("builtin:minilm", str(catalog), str(path)))


def test_missing_queries_file(catalog, tmp_path):
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        run(EvaluateConfig("builtin:minilm", str(catalog), str(tmp_path / "nope.jsonl")))


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="-k"):
        EvaluateConfig("m", "c", "q", k=0)
    with pytest.raises(InputError, match="text-template"):
        EvaluateConfig("m", "c", "q", text_template="no fields")


def test_args_round_trip():
    parser = argparse.ArgumentParser()
    add_arguments(parser, EvaluateConfig)
    args = parser.parse_args(
        ["--model", "builtin:minilm", "--catalog", "c/", "--queries", "q.jsonl", "-k", "5"]
    )
    config = from_args(EvaluateConfig, args)
    assert config == EvaluateConfig("builtin:minilm", "c/", "q.jsonl", k=5)


# ---------------------------------------------------------------------------- retrieval (train)


def test_retrieval_from_triplets_is_one_query_per_anchor_over_positives_and_negatives():
    from fashion_batch.evaluate.retrieval import from_triplets

    r = from_triplets(
        ["red", "red", "blue"],
        ["red dress", "red skirt", "blue jeans"],
        ["blue jeans", "green top", "red dress"],  # a positive of one row is another's negative
    )
    assert r.source == "triplets"
    assert sorted(r.queries.values()) == ["blue", "red"]
    assert sorted(r.corpus.values()) == ["blue jeans", "green top", "red dress", "red skirt"]
    text = {**r.queries, **r.corpus}
    relevant = {text[q]: sorted(text[d] for d in docs) for q, docs in r.relevant.items()}
    assert relevant == {"red": ["red dress", "red skirt"], "blue": ["blue jeans"]}


def test_retrieval_scores_agree_with_the_hand_written_metrics(catalog, queries, minilm):
    """ST's InformationRetrievalEvaluator (what `train` gates on) and metrics.py rank the same
    catalog the same way for a cosine model: the same NDCG, MRR and Recall at 10 and at 2."""
    from fashion_batch.evaluate import read_catalog_texts, read_queries
    from fashion_batch.evaluate.metrics import rank_and_score
    from fashion_batch.evaluate.retrieval import from_catalog
    from fashion_batch.text import Template

    template = Template("{title}. {description}")
    ids, texts, _ = read_catalog_texts(str(catalog), "listing_id", template)
    qs = read_queries(str(queries))
    qs.append({"query_id": "q6", "query": "winter clothes", "relevant_ids": [1, 5, 3]})
    retrieval = from_catalog(qs, ids, texts)
    assert retrieval.source == "catalog" and len(retrieval.queries) == 5  # q5: none listed
    scores = retrieval.score(minilm)
    assert scores["queries"] == 5 and scores["corpus"] == 4
    # MiniLM normalises and ranks by cosine: dot product ranks alike.
    assert scores["similarity"] == "cosine"
    assert scores["dot_ndcg@10"] == pytest.approx(scores["ndcg@10"])
    assert scores["cosine_ndcg@10"] == scores["ndcg@10"]
    position = {str(i): n for n, i in enumerate(ids)}
    kept = list(retrieval.queries)
    relevant = [{position[d] for d in retrieval.relevant[q]} for q in kept]
    query_texts = [retrieval.queries[q] for q in kept]
    for k in (10, 2):
        ours = rank_and_score(minilm, query_texts, texts, relevant, k=k, batch_size=8)
        if k == 10:
            theirs = scores
        else:  # the library's evaluator itself at k=2, where the cutoff matters
            from sentence_transformers.sentence_transformer.evaluation import (
                InformationRetrievalEvaluator,
            )

            raw = InformationRetrievalEvaluator(
                retrieval.queries,
                retrieval.corpus,
                retrieval.relevant,
                mrr_at_k=[2],
                ndcg_at_k=[2],
                precision_recall_at_k=[2],
                write_csv=False,
            )(minilm)
            theirs = {f"{m}@2": raw[f"cosine_{m}@2"] for m in ("ndcg", "mrr", "recall")}
        for m in ("ndcg", "mrr", "recall"):
            assert theirs[f"{m}@{k}"] == pytest.approx(ours[f"{m}@{k}"], abs=1e-6), (m, k)


def test_the_hand_written_set_is_well_formed():
    """tests/data/handwritten_*.jsonl: listings and shopper queries written by hand, in a
    vocabulary sample-data never uses (docs/training.md records base vs fine-tuned on them)."""
    from pathlib import Path

    data = Path(__file__).parent / "data"
    listings = [json.loads(line) for line in (data / "handwritten_listings.jsonl").open()]
    queries = [json.loads(line) for line in (data / "handwritten_queries.jsonl").open()]
    ids = [row["listing_id"] for row in listings]
    assert len(ids) == len(set(ids)) >= 40
    assert all(row["title"].strip() and row["description"].strip() for row in listings)
    assert len({q["query_id"] for q in queries}) == len(queries) >= 40
    assert all(q["relevant_ids"] and set(q["relevant_ids"]) <= set(ids) for q in queries)


def test_scoring_draws_nothing_from_the_random_generators(minilm):
    """`train` scores every epoch on rank 0 only: if scoring drew random numbers, rank 0's
    dropout masks would differ from a run without evaluation."""
    from fashion_batch.evaluate.retrieval import from_triplets

    retrieval = from_triplets(["red coat", "blue jeans"], ["a red coat", "jeans"], ["x", "y"])
    was_training = minilm.training
    minilm.train()
    try:
        before = torch.random.get_rng_state()
        retrieval.score(minilm)
        assert torch.equal(torch.random.get_rng_state(), before)
        assert minilm.training  # scored in eval mode, then put back
    finally:
        minilm.train(was_training)


# ---------------------------------------------------------------------------- stored vectors


@pytest.fixture(scope="module")
def handwritten_output(tmp_path_factory, ray_cluster):
    """The hand-written catalog embedded by the torch backend on the shared Ray cluster."""
    from pathlib import Path

    from fashion_batch.embed import EmbedConfig
    from fashion_batch.embed import run as embed

    data = Path(__file__).parent / "data"
    d = tmp_path_factory.mktemp("stored")
    rows = [json.loads(line) for line in (data / "handwritten_listings.jsonl").open()]
    (d / "catalog").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), d / "catalog" / "listings.parquet")
    embed(EmbedConfig(input=str(d / "catalog"), output=str(d / "out"), backend="torch"))
    return d, str(data / "handwritten_queries.jsonl")


def test_evaluate_embeddings_matches_encoding_the_catalog(handwritten_output, capsys):
    """The stored vectors (torch backend) score what encoding the catalog scores; the model is
    the manifest's when --model is not given, and --json prints one object."""
    from fashion_batch.cli import main

    d, queries = handwritten_output
    encoded = run(EvaluateConfig("builtin:minilm", str(d / "catalog"), queries))
    assert main(["evaluate", "--embeddings", str(d / "out"), "--queries", queries, "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert stored["ndcg@10"] == pytest.approx(encoded["ndcg@10"], abs=1e-4)
    assert stored["recall@10"] == pytest.approx(encoded["recall@10"], abs=1e-4)
    assert stored["queries"] == encoded["queries"] == 44
    assert stored["corpus"] == 40 and stored["backend"] == "torch"


def test_evaluate_embeddings_refuses_another_model(handwritten_output, tiny_distilbert_dir):
    d, queries = handwritten_output
    config = EvaluateConfig(tiny_distilbert_dir, queries=queries, embeddings=str(d / "out"))
    with pytest.raises(InputError, match="differ from the model the embeddings"):
        run(config)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"model": "m", "catalog": "c", "embeddings": "e"}, "--catalog .* or --embeddings"),
        ({"model": "m"}, "--catalog .* or --embeddings"),
        ({"catalog": "c"}, "--model is required with --catalog"),
        ({"embeddings": "e", "k": 5}, "-k 5: --embeddings reports the evaluator's fixed"),
    ],
)
def test_catalog_or_embeddings(settings, message):
    with pytest.raises(InputError, match=message):
        EvaluateConfig(queries="q.jsonl", **settings)
