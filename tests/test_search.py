"""`fashion-batch search` over real embed outputs (made here on the module's Ray cluster): the
obvious listing wins with the real MiniLM, scores are the model's own similarity (cosine for
MiniLM, dot product for the seed architecture), the chunked top-k equals a one-shot brute force,
and wrong inputs exit 2 with a message."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.embed import EmbedConfig, run
from fashion_batch.search import SearchConfig
from fashion_batch.search import run as search

LISTINGS = [
    (1, "Red leather handbag", "Genuine red leather tote with a gold clasp"),
    (2, "Blue denim jeans", "Straight-leg jeans, light wash, size 32"),
    (3, "Black wool winter coat", "Long double-breasted coat, very warm"),
    (4, "White running sneakers", "Lightweight trainers for jogging, size 42"),
    (5, "Silk floral scarf", "Square scarf with a rose print"),
    (6, "Brown leather belt", "Full-grain belt with a brass buckle"),
    (7, "Red cotton t-shirt", "Crew neck tee, relaxed fit"),
    (8, "Gold hoop earrings", "Small 14k gold-plated hoops"),
    (9, "Navy blazer", "Slim-fit single-breasted blazer"),
    (10, "Green canvas backpack", "Roomy backpack with laptop sleeve"),
    (11, None, None),  # quarantined (empty_text): never a hit
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    d = tmp_path_factory.mktemp("shop")
    (d / "catalog").mkdir()
    table = pa.table(
        {
            "listing_id": pa.array([r[0] for r in LISTINGS], pa.int64()),
            "title": pa.array([r[1] for r in LISTINGS], pa.string()),
            "description": pa.array([r[2] for r in LISTINGS], pa.string()),
        }
    )
    pq.write_table(table, d / "catalog" / "listings.parquet")
    return d


@pytest.fixture(scope="module")
def minilm_out(shop, ray_cluster):
    """A MiniLM embed output cut into parts of 4 rows, so top-k really runs over several parts."""
    out = shop / "emb-minilm"
    run(EmbedConfig(input=str(shop / "catalog"), output=str(out), rows_per_part=4, batch_size=8))
    return out


@pytest.fixture(scope="module")
def seed_out(shop, ray_cluster, tiny_distilbert_dir):
    """The seed architecture (dot similarity) on the tiny DistilBERT, embedded with --normalize."""
    from fashion_batch.encoders.models import build_seed_model

    model_dir = shop / "seed-model"
    build_seed_model(tiny_distilbert_dir, out_dim=48).save(str(model_dir))
    out = shop / "emb-seed"
    run(
        EmbedConfig(
            input=str(shop / "catalog"), output=str(out), model=str(model_dir), normalize=True
        )
    )
    return out, str(model_dir)


def _vectors(out) -> tuple[list, np.ndarray]:
    table = pa.concat_tables(pq.read_table(p) for p in _parts(out))
    dim = table.schema.field("embedding").type.list_size
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    return table.column("listing_id").to_pylist(), emb


def _parts(out):
    return sorted(str(p) for p in out.glob("part-*.parquet"))


def test_cli_red_leather_handbag_wins(shop, minilm_out, capsys):
    argv = ["search", "--embeddings", str(minilm_out), "--catalog", str(shop / "catalog")]
    assert main([*argv, "--model", "builtin:minilm", "red leather handbag", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "text"]
    assert len(lines) == 4
    rank, score, listing_id, *text = lines[1].split()
    assert (rank, listing_id) == ("1", "1")
    assert " ".join(text).startswith("Red leather handbag. Genuine red leather tote")


def test_without_model_and_catalog_the_manifest_names_them(shop, minilm_out, capsys):
    """The manifest recorded builtin:minilm and the catalog it read: search needs neither flag."""
    assert main(["search", "--embeddings", str(minilm_out), "red leather handbag", "-k", "1"]) == 0
    best = capsys.readouterr().out.strip().splitlines()[1]
    assert best.split()[2] == "1" and "Red leather handbag. Genuine red leather tote" in best


def test_scores_are_cosine_and_topk_matches_brute_force(shop, minilm_out, minilm):
    """MiniLM's similarity is cosine: the scores equal a numpy cosine over every stored vector,
    and the chunked (per part) top-k equals the one-shot top-k."""
    assert len(_parts(minilm_out)) == 3
    for query in ("red leather handbag", "shoes for jogging", "warm coat for winter"):
        hits = search(
            SearchConfig(str(minilm_out), str(shop / "catalog"), "builtin:minilm", query, k=5)
        )
        ids, emb = _vectors(minilm_out)
        q = minilm.encode([query], convert_to_numpy=True)[0]
        cos = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))
        order = np.argsort(-cos, kind="stable")[:5]
        assert [h["id"] for h in hits] == [ids[i] for i in order], query
        np.testing.assert_allclose([h["score"] for h in hits], cos[order], rtol=1e-5, atol=1e-5)
    assert hits[0]["id"] == 3  # the coat
    everything = search(
        SearchConfig(str(minilm_out), str(shop / "catalog"), "builtin:minilm", "bag", k=50)
    )
    assert sorted(h["id"] for h in everything) == list(range(1, 11))  # 11 was quarantined
    assert [h["rank"] for h in everything] == list(range(1, 11))


def test_dot_similarity_model_on_normalized_output(shop, seed_out):
    """The seed architecture scores by dot product; the job normalized, so the query is too."""
    from fashion_batch.encoders.models import load_model

    out, model_dir = seed_out
    hits = search(
        SearchConfig(str(out), str(shop / "catalog"), model_dir, "red leather handbag", k=10)
    )
    model = load_model(model_dir, "cpu", "fp32")
    assert model.similarity_fn_name == "dot"
    q = model.encode(["red leather handbag"], normalize_embeddings=True, convert_to_numpy=True)[0]
    ids, emb = _vectors(out)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    dot = dict(zip(ids, emb @ q, strict=True))
    assert len(hits) == 10
    for h in hits:
        assert h["score"] == pytest.approx(float(dot[h["id"]]), abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def _search_rc(capsys, embeddings, catalog_uri, model, *extra):
    argv = ["search", "--embeddings", str(embeddings), "--catalog", str(catalog_uri)]
    rc = main([*argv, "--model", model, *extra, "red bag"])
    return rc, capsys.readouterr().err


def test_no_manifest_exits_2(shop, capsys):
    rc, err = _search_rc(capsys, shop, shop, "builtin:minilm")
    assert rc == 2 and f"--embeddings {shop}: no manifest.json" in err, err


def test_model_mismatch_exits_2(shop, minilm_out, tiny_distilbert_dir, capsys):
    rc, err = _search_rc(capsys, minilm_out, shop / "catalog", tiny_distilbert_dir)
    assert rc == 2 and "differ from the model the embeddings" in err and "builtin:minilm" in err


def test_wrong_id_column_exits_2(shop, minilm_out, tmp_path, capsys):
    rc, err = _search_rc(
        capsys, minilm_out, shop / "catalog", "builtin:minilm", "--id-column", "sku"
    )
    assert rc == 2 and "--id-column 'sku'" in err and "'listing_id'" in err, err
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"sku": [1], "title": ["x"], "description": ["y"]}), other)
    rc, err = _search_rc(capsys, minilm_out, other, "builtin:minilm")
    assert rc == 2 and f"{other}: missing column 'listing_id'" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--embeddings", "out", "a query"],
        ["evaluate", "--model", "m", "--catalog", "c", "--queries", "q"],
    ],
)
def test_k_is_a_short_flag_of_top_k(argv, capsys):
    """`-k` and `--top-k` set the same field (`k` in --config and the Python API); the help
    shows one long flag, not the `--k` argparse made from the field name."""
    from fashion_batch.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([*argv, "-k", "3"]).k == 3
    assert parser.parse_args([*argv, "--top-k", "4"]).k == 4
    with pytest.raises(SystemExit):
        parser.parse_args([argv[0], "--help"])
    help_text = capsys.readouterr().out
    assert "-k K, --top-k K" in help_text and "--k " not in help_text
