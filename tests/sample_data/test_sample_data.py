"""sample_data: the synthetic catalog, triplets and queries keep their contract."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import ftfy
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.sample_data import SampleDataConfig, run
from fashion_batch.sample_data.catalog import listing_text
from fashion_batch.sample_data.dirt import DIRTY_RATES, mojibake
from fashion_batch.sample_data.styles import (
    COLOUR_SYNONYMS,
    EVAL_ONLY_STYLES,
    QUERY_STYLES,
    TRAIN_STYLES,
    misspell,
    styles_for,
    write,
)
from fashion_batch.sample_data.triplets import _ATTR_SIZES, KINDS, MAX_RELEVANT

LISTINGS = 600


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sample")
    return out, run(SampleDataConfig(output=str(out), listings=LISTINGS, seed=0, files=3))


@pytest.fixture(scope="module")
def rows(sample) -> list[dict]:
    return pq.read_table(sample[0] / "catalog").to_pylist()


@pytest.fixture(scope="module")
def queries(sample) -> list[dict]:
    lines = (sample[0] / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _triplets(out: Path, split: str) -> pa.Table:
    return pq.read_table(out / "triplets" / f"{split}.parquet")


def _all_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_catalog_rows_split_evenly_with_schema(sample):
    out, summary = sample
    parts = sorted((out / "catalog").glob("*.parquet"))
    assert [p.name for p in parts] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert summary["catalog_files"] == [str(p) for p in parts]
    sizes = [pq.read_metadata(p).num_rows for p in parts]
    assert sum(sizes) == LISTINGS and max(sizes) - min(sizes) <= 1
    expected = {
        "listing_id": pa.int64(),
        "price": pa.float64(),
        **{c: pa.string() for c in ("title", "description", "brand", "category", "colour")},
        **{c: pa.string() for c in ("material", "size", "condition")},
    }
    for part in parts:
        schema = pq.read_schema(part)
        assert {f.name: f.type for f in schema} == expected


def test_same_seed_gives_identical_bytes_other_seed_differs(sample, tmp_path):
    out, _ = sample
    again, other = tmp_path / "again", tmp_path / "other"
    run(SampleDataConfig(output=str(again), listings=LISTINGS, seed=0, files=3))
    run(SampleDataConfig(output=str(other), listings=LISTINGS, seed=1, files=3))
    reference = _all_files(out)
    assert len(reference) == 6  # 3 catalog parts, 2 triplet files, queries.jsonl
    assert _all_files(again) == reference
    different = _all_files(other)
    assert different.keys() == reference.keys()
    assert all(different[name] != reference[name] for name in reference)


def test_ids_positive_unique_apart_from_dirt_and_not_in_file_order(rows):
    ids = [r["listing_id"] for r in rows if r["listing_id"] is not None]
    assert all(i > 0 for i in ids)
    assert ids != sorted(ids)
    duplicated = [i for i, count in Counter(ids).items() if count > 1]
    assert 1 <= len(duplicated) <= 4  # only the duplicate_id rows repeat an id


def test_every_kind_of_dirt_is_present(rows, sample):
    summary = sample[1]
    assert set(summary["dirty_rows"]) == set(DIRTY_RATES)
    assert all(count >= 1 for count in summary["dirty_rows"].values())
    assert sum(r["listing_id"] is None for r in rows) == summary["dirty_rows"]["missing_id"]
    blank = [r for r in rows if _blank(r["title"]) and _blank(r["description"])]
    assert len(blank) == summary["dirty_rows"]["blank_text"]
    by_id = Counter(r["listing_id"] for r in rows if r["listing_id"] is not None)
    copies = [r for r in rows if by_id[r["listing_id"]] > 1]
    texts = Counter((r["listing_id"], r["title"], r["description"]) for r in copies)
    assert any(n > 1 for n in texts.values()), "no duplicate id with identical text"
    assert any(n == 1 for n in texts.values()), "no duplicate id with different text"
    descriptions = [r["description"] for r in rows if r["description"] is not None]
    assert any(re.search(r"<(p|b|ul|li)>", d) and "&amp;" in d for d in descriptions)
    joined = [(r["title"] or "") + (r["description"] or "") for r in rows]
    assert any(re.search(r"[\x00\x07\x1b\x7f]", text) for text in joined)
    nulls = [r for r in rows if r["description"] is None and not _blank(r["title"])]
    assert len(nulls) >= summary["dirty_rows"]["null_description"]


def test_mojibake_rows_are_repairable_by_ftfy(rows):
    assert mojibake("cute top 💕") == "cute top ðŸ’•"
    for text in ("Stüssy tee ✨", "Café crème 🔥 ⭐", "plain ascii"):
        assert ftfy.fix_text(mojibake(text)) == text
    garbled = [r["description"] for r in rows if r["description"] and "ðŸ" in r["description"]]
    assert garbled
    for text in garbled:
        fixed = ftfy.fix_text(text)
        assert fixed != text and "ðŸ" not in fixed and "Ã" not in fixed


def test_triplets_are_clean_listing_texts_with_attribute_queries(sample, rows):
    out, summary = sample
    clean_texts = {
        listing_text(r["title"], r["description"]): r["category"]
        for r in rows
        if r["listing_id"] is not None and not _blank(r["title"]) and r["description"]
    }
    for split, minimum in (("train", 40), ("eval", 10)):
        table = _triplets(out, split)
        assert table.schema.names == ["anchor", "positive", "negative"]
        assert all(t == pa.string() for t in table.schema.types)
        assert table.num_rows >= minimum
        assert table.num_rows == summary[f"{split}_triplets"]
        for t in table.to_pylist():
            assert all(isinstance(v, str) and v.strip() for v in t.values())
            assert t["positive"] != t["negative"]
            # the positive is a real listing and the query names its category
            assert clean_texts[t["positive"]] in t["anchor"].lower()
            assert t["negative"] in clean_texts


def test_held_out_queries_never_train_anchors(sample, queries):
    out, _ = sample
    train = set(_triplets(out, "train").column("anchor").to_pylist())
    evals = set(_triplets(out, "eval").column("anchor").to_pylist())
    assert train and evals and queries
    assert not train & evals
    assert not train & {q["query"] for q in queries}


def test_queries_point_at_embeddable_listings_of_their_category(queries, rows):
    assert len(queries) >= 10
    assert [q["query_id"] for q in queries] == [f"q{i:04d}" for i in range(1, len(queries) + 1)]
    assert len({q["query"] for q in queries}) == len(queries)
    counts = Counter(r["listing_id"] for r in rows)
    category = {r["listing_id"]: r["category"] for r in rows}
    for q in queries:
        relevant = q["relevant_ids"]
        assert 1 <= len(relevant) <= MAX_RELEVANT
        assert relevant == sorted(set(relevant))
        assert all(counts[i] == 1 for i in relevant), "relevant ids exist and are not duplicated"
        assert len({category[i] for i in relevant}) == 1
        assert category[relevant[0]] in q["query"].lower()


def test_smallest_catalog_still_has_every_part(tmp_path):
    summary = run(SampleDataConfig(output=str(tmp_path), listings=50, seed=3, files=4))
    assert sum(pq.read_metadata(p).num_rows for p in summary["catalog_files"]) == 50
    assert all(count >= 1 for count in summary["dirty_rows"].values())
    assert summary["train_triplets"] >= 40 and summary["eval_triplets"] >= 10
    assert summary["queries"] >= 10


def test_rerun_with_fewer_files_leaves_no_stale_parts(tmp_path):
    run(SampleDataConfig(output=str(tmp_path), listings=60, files=4))
    run(SampleDataConfig(output=str(tmp_path), listings=60, files=2))
    parts = sorted((tmp_path / "catalog").iterdir())
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(tmp_path / "catalog").num_rows == 60


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"listings": 49}, "listings"),
        ({"listings": 100, "files": 0}, "files"),
        ({"listings": 60, "files": 61}, "files"),
    ],
)
def test_config_rejects_bad_sizes(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SampleDataConfig(output=str(tmp_path), **kwargs)


def _every_query(styles: tuple[str, ...]) -> set[str]:
    """Every text these styles can write, for every combination (fit: every size word)."""
    grid = [i / 12 for i in range(12)]  # picks every entry of lists up to 12 long
    out = set()
    for kind in KINDS:
        ranges = [range(_ATTR_SIZES[a]) for a in kind]
        for values in itertools.product(*ranges):
            for style in set(styles) & set(styles_for(kind)):
                out.update(write(style, kind, values, u, "M") for u in grid)
    return out


def test_queries_come_in_every_style_and_training_never_sees_the_held_out_ones(sample, queries):
    """Held-out queries differ from training in wording, not only in attribute combination:
    misspellings, colour synonyms and size/fit phrasing are never training anchors."""
    out, summary = sample
    assert {q["style"] for q in queries} == set(QUERY_STYLES)
    assert summary["query_styles"] == Counter(q["style"] for q in queries)
    trainable = _every_query(TRAIN_STYLES)
    train = set(_triplets(out, "train").column("anchor").to_pylist())
    assert train <= trainable
    held_out_style = [q["query"] for q in queries if q["style"] in EVAL_ONLY_STYLES]
    assert held_out_style and not set(held_out_style) & trainable
    synonyms = [q["query"] for q in queries if q["style"] == "synonym"]
    words = {w for names in COLOUR_SYNONYMS.values() for w in names}
    assert all(any(w in q for w in words) for q in synonyms)


def test_fit_queries_are_relevant_only_to_listings_of_that_size(queries, rows):
    size = {r["listing_id"]: r["size"] for r in rows}
    fit = [q for q in queries if q["style"] == "fit"]
    assert fit
    for q in fit:
        sizes = {size[i] for i in q["relevant_ids"]}
        assert len(sizes) == 1 and sizes.pop() in q["query"]


def test_training_never_sees_a_held_out_brand(sample, rows):
    out, summary = sample
    held = set(summary["held_out_brands"])
    assert held
    brand = {listing_text(r["title"], r["description"]): r["brand"] for r in rows}
    train = _triplets(out, "train").to_pylist()
    assert not {brand[t[c]] for t in train for c in ("positive", "negative")} & held
    evals = _triplets(out, "eval").to_pylist()
    assert {brand[t["positive"]] for t in evals} & held  # eval does see them


@pytest.mark.parametrize(
    "query, keep",
    [("rugged workwear jacket", "jacket"), ("red coat", "coat"), ("90s t-shirt", "t-shirt")],
)
def test_a_misspelling_always_changes_the_query_but_never_the_category(query, keep):
    for u in (0.0, 0.13, 0.5, 0.77, 0.99):
        typo = misspell(query, keep, u)
        assert typo != query and typo.split(" ")[-1] == keep
        assert len(typo) in (len(query), len(query) - 1) or " " in query
