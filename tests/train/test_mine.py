"""train/mine.py: hard negatives from the catalog, and what each false-negative filter removes.

The model is a lookup table of vectors, so every similarity (and so every filter's decision) is
set by the test, not by what a real model happens to think."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fashion_batch.train.mine import mine, product_key, read_catalog

# listing_id, title, description, brand, seller_id, vector
LISTINGS = [
    (1, "Levi's 501 jeans", "blue denim, W32", "Levi's", "s1", [0.8, 0.6, 0.0, 0.0]),
    (2, "Levis 501 jeans", "blue denim, W30", "levi's", "s2", [0.85, 0.0, 0.5, 0.0]),
    (3, "Slim jeans", "stretch denim", "Gap", "s1", [0.84, 0.0, 0.0, 0.55]),
    (4, "Five-pocket 501s", "blue denim, W32", "Vintage", "s3", [0.81, 0.59, 0.0, 0.0]),
    (5, "Bootcut jeans", "Wrangler, W34", "Wrangler", "s4", [0.83, -0.2, 0.0, -0.5]),
    (6, "Denim jacket", "blue, size M", "Lee", "s5", [0.79, -0.61, 0.0, 0.0]),
    (7, "Chinos", "khaki cotton", "Gap", "s6", [0.5, 0.0, 0.86, 0.0]),
    (8, "Green beanie", "wool knit", "Uniqlo", "s7", [0.2, 0.0, 0.0, 0.98]),
]
TEXTS = {f"{t}. {d}": v for _, t, d, _, _, v in LISTINGS}


class LookupModel:
    """`encode` returns the vector the test gave each text."""

    vectors = {**TEXTS, "blue jeans": [1.0, 0.0, 0.0, 0.0], "green hat": [0.0, 0.0, 0.0, 1.0]}
    vectors["Green wool hat. not listed"] = [0.0, 0.0, 0.0, 1.0]

    def encode(self, texts, **kwargs):
        return torch.tensor([self.vectors[t] for t in texts])  # (n, 4)


@pytest.fixture
def catalog(tmp_path):
    columns = ("listing_id", "title", "description", "brand", "seller_id")
    table = pa.table({c: [row[i] for row in LISTINGS] for i, c in enumerate(columns)})
    pq.write_table(table, tmp_path / "catalog.parquet")
    return read_catalog(str(tmp_path / "catalog.parquet"))


def test_every_filter_removes_its_false_negatives_and_the_first_survivor_is_mined(catalog):
    text = {row[0]: f"{row[1]}. {row[2]}" for row in LISTINGS}
    train = {
        "anchor": ["blue jeans", "blue jeans", "green hat"],
        "positive": [text[1], text[5], "Green wool hat. not listed"],
        "negative": ["easy negative 1", "easy negative 2", "easy negative 3"],
    }
    mined, report = mine(train, catalog, LookupModel(), range_max=8, max_similarity=0.95)
    # Anchor scores, best first: 2 (.86), 5 (.84), 3 (.84), 4 (.81), 1 (.80), 6 (.79), 7 (.50).
    # Triplet 0 (positive: listing 1, seller s1, score .80): 2 same product (Levi's 501 jeans,
    # brand case and apostrophe aside), 5 a positive of the same anchor, 3 same seller, 4 a
    # near-duplicate, 1 itself, 6 within the 5% margin of .80; so 7.
    # Triplet 1 (positive: listing 5, score .84): 2, 3 and 4 within the margin, 5 itself, 1 a
    # positive of the same anchor; 6 is the first that is no match.
    # Triplet 2 (positive not in the catalog): 8 is a near-duplicate of it; then 3.
    assert mined["anchor"] == train["anchor"] and mined["positive"] == train["positive"]
    assert mined["negative"] == [text[7], text[6], text[3]]
    assert report.removed == {
        "same_listing": 2,
        "anchor_positive": 2,
        "same_product": 1,
        "same_seller": 1,
        "near_duplicate": 2,
        "margin": 4,
    }
    assert (report.mined, report.kept_own, report.positives_not_in_catalog) == (3, 0, 1)
    assert report.candidates == 7 + 6 + 2 and report.passed == 3
    assert report.as_dict()["removed"] == report.removed  # as training_metrics.json records it


def test_a_triplet_without_a_surviving_candidate_keeps_its_own_negative(catalog):
    train = {"anchor": ["green hat"], "positive": ["Green wool hat. not listed"]}
    train["negative"] = ["easy"]
    mined, report = mine(train, catalog, LookupModel(), range_max=1)
    assert mined["negative"] == ["easy"]
    assert report.removed["near_duplicate"] == 1 and report.kept_own == 1 and report.mined == 0


def test_skipping_the_top_ranks_never_mines_them(catalog):
    text = {row[0]: f"{row[1]}. {row[2]}" for row in LISTINGS}
    train = {"anchor": ["blue jeans"], "positive": [text[1]], "negative": ["easy"]}
    mined, report = mine(train, catalog, LookupModel(), range_max=8, range_min=7)
    assert report.candidates == 1  # only rank 7: the beanie
    assert mined["negative"] == [text[8]]


def test_product_key_ignores_case_and_punctuation():
    assert product_key("501 Jeans!", "Levi's") == product_key("501  jeans", "LEVIS")
    assert product_key("501 Jeans", "Levi\u2019s") == product_key("501 jeans", "levis")
    assert product_key("501 Jeans", "Levi's") != product_key("505 Jeans", "Levi's")
    assert product_key(None, None) == ""


def test_a_repeated_query_gets_a_different_negative_each_time(catalog):
    """NO_DUPLICATES batches cannot hold two rows with one text: a query asked three times
    takes the best unused survivor each time, then the least used."""
    text = {row[0]: f"{row[1]}. {row[2]}" for row in LISTINGS}
    train = {"anchor": ["green hat"] * 3, "positive": ["Green wool hat. not listed"] * 3}
    train["negative"] = ["easy 1", "easy 2", "easy 3"]
    mined, report = mine(train, catalog, LookupModel(), range_max=8, max_similarity=0.95)
    # By score to the hat: 8 (near-duplicate), 3, then 7, 2, 1, 4, 6 all at 0 (ties: index order).
    assert mined["negative"][0] == text[3]
    assert len(set(mined["negative"])) == 3
    assert report.mined == 3 and report.candidates == sum(report.removed.values()) + report.passed
