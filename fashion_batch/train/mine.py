"""Hard negatives from the catalog, mined with the base model, with catalog-aware filters.

A generated or logged triplet's negative is often easy (another category), so MNRL learns little
from it. Mining replaces it with a catalog listing the base model ranks high for the anchor but
that is not a match. The danger is the false negative: a listing that IS relevant, which MNRL
then pushes away. The base's own ranking cannot tell them apart, so every candidate passes these
filters, in this order, and `MineReport` counts what each one removed:

1. `same_listing`: the positive itself (same id or same text);
2. `anchor_positive`: a positive of the same anchor in another triplet (labelled relevant);
3. `same_product`: the same normalised title + brand as the positive (a relisting, a variant);
4. `same_seller`: the positive's seller (a seller's listings of one drop read alike), when the
   catalog has a `seller_id` column;
5. `near_duplicate`: cosine to the positive above `max_similarity` (the same text, reworded);
6. `margin`: anchor similarity within `margin` of the positive's (relative, as
   sentence-transformers' `mine_hard_negatives(relative_margin=...)`): too close to call.

The new negative is the best-ranked survivor among the base's ranks `range_min` to `range_max`
that is the negative of the fewest triplets so far: a repeated query would otherwise get the same
listing every time, and NO_DUPLICATES batches cannot hold two rows sharing a text, so a few
popular negatives would leave few full batches. A triplet left without a survivor keeps its own.

Why not `sentence_transformers.util.mine_hard_negatives` itself: it filters by score only, cannot
see a candidate's product, seller or id, and reports no counts; the ranking and the margin rule
here are the ones it uses.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from fashion_batch.text import clean_text

log = logging.getLogger(__name__)
FILTERS = (
    "same_listing",
    "anchor_positive",
    "same_product",
    "same_seller",
    "near_duplicate",
    "margin",
)


@dataclass
class MineReport:
    """What mining did: candidates examined, how many each filter removed and how many passed
    them all (candidates = sum(removed) + passed), how many triplets got a mined negative, and
    how many kept their own (no candidate survived)."""

    triplets: int = 0
    candidates: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    passed: int = 0
    mined: int = 0
    kept_own: int = 0
    positives_not_in_catalog: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def product_key(title: str | None, brand: str | None) -> str:
    """Normalised brand + title: lower case, apostrophes dropped, anything else that is not a
    letter or digit a single space, so "Levi's 501 jeans!" and "LEVIS 501  jeans" are one
    product."""
    text = f"{brand or ''} {title or ''}".lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^0-9a-z]+", " ", text).strip()


@dataclass
class Catalog:
    """The listings to mine from: cleaned text, product key and seller per listing."""

    ids: list
    texts: list[str]
    products: list[str]
    sellers: list  # None where the catalog has no seller_id column


def read_catalog(uri: str, flag: str = "--mine-catalog") -> Catalog:
    """Every listing `embed` would keep (its text as `embed` gives it to the model), with the
    title, brand and seller_id columns where present."""
    import pyarrow.dataset as pads

    from fashion_batch.evaluate.job import read_catalog_texts
    from fashion_batch.io.inputs import list_input_files
    from fashion_batch.text import Template

    ids, texts, _ = read_catalog_texts(uri, "listing_id", Template("{title}. {description}"))
    fs, files = list_input_files(uri, flag=flag)
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    wanted = ("listing_id", "title", "brand", "seller_id")
    columns = [c for c in wanted if c in dataset.schema.names]
    meta: dict = {}
    for row in dataset.to_table(columns=columns).to_pylist():
        meta.setdefault(row["listing_id"], row)  # the first occurrence, as embed keeps it
    return Catalog(
        ids=ids,
        texts=texts,
        products=[product_key(meta[i].get("title"), meta[i].get("brand")) for i in ids],
        sellers=[meta[i].get("seller_id") for i in ids],
    )


def mine(
    train: dict[str, list[str]],
    catalog: Catalog,
    model,
    *,
    range_max: int = 50,
    range_min: int = 0,
    max_similarity: float = 0.95,
    margin: float = 0.05,
    batch_size: int = 64,
) -> tuple[dict[str, list[str]], MineReport]:
    """(train with mined negatives, report). `model` is the base, used for ranking only;
    candidates are its ranks `range_min` to `range_max` (0-based, end excluded) per anchor."""
    import torch
    from sentence_transformers.util import cos_sim

    report = MineReport(triplets=len(train["anchor"]))
    position = {t: i for i, t in enumerate(catalog.texts)}
    encode = dict(batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    anchors = list(dict.fromkeys(train["anchor"]))
    with torch.inference_mode():
        docs = model.encode(catalog.texts, **encode)  # (n_docs, dim)
        queries = model.encode(anchors, **encode)  # (n_anchors, dim)
        positives = model.encode([clean_text(p) for p in train["positive"]], **encode)  # (n, dim)
    anchor_row = {a: i for i, a in enumerate(anchors)}
    relevant: dict[str, set[int]] = {}  # anchor -> catalog rows of its positives
    for anchor, positive in zip(train["anchor"], train["positive"], strict=True):
        row = position.get(clean_text(positive))
        if row is not None:
            relevant.setdefault(anchor, set()).add(row)
    k = min(range_max, len(catalog.texts))
    scores = cos_sim(queries, docs)  # (n_anchors, n_docs)
    top_scores, top_rows = scores.topk(k, dim=1)  # (n_anchors, k) each, best first
    negatives = []
    uses = Counter()  # catalog row -> triplets it is already the negative of
    for i, (anchor, positive) in enumerate(zip(train["anchor"], train["positive"], strict=True)):
        a = anchor_row[anchor]
        pos_row = position.get(clean_text(positive))
        report.positives_not_in_catalog += pos_row is None
        pos_score = float(cos_sim(queries[a : a + 1], positives[i : i + 1]))
        to_positive = cos_sim(positives[i : i + 1], docs[top_rows[a]])[0]  # (k,)
        chosen = None
        for j, row in enumerate(top_rows[a].tolist()):
            if j < range_min:
                continue
            if chosen is not None and uses[chosen] == 0:
                break  # the best-ranked survivor nobody uses yet: none can beat it
            report.candidates += 1
            reason = _reason(
                row,
                pos_row,
                catalog,
                relevant.get(anchor, set()),
                clean_text(positive),
                float(to_positive[j]),
                float(top_scores[a, j]),
                pos_score,
                max_similarity,
                margin,
            )
            if reason:
                report.removed[reason] += 1
                continue
            report.passed += 1
            if chosen is None or uses[row] < uses[chosen]:
                chosen = row
        if chosen is None:
            report.kept_own += 1
            negatives.append(train["negative"][i])
        else:
            report.mined += 1
            uses[chosen] += 1
            negatives.append(catalog.texts[chosen])
    log.info("mined hard negatives: %s", report.as_dict())
    return {**train, "negative": negatives}, report


def _reason(
    row: int,
    pos_row: int | None,
    catalog: Catalog,
    anchor_positives: set[int],
    positive_text: str,
    to_positive: float,
    score: float,
    pos_score: float,
    max_similarity: float,
    margin: float,
) -> str | None:
    """The first filter that removes catalog row `row` as a negative for this triplet."""
    if row == pos_row or catalog.texts[row] == positive_text:
        return "same_listing"
    if row in anchor_positives:
        return "anchor_positive"
    if pos_row is not None:
        if catalog.products[row] and catalog.products[row] == catalog.products[pos_row]:
            return "same_product"
        seller = catalog.sellers[pos_row]
        if seller is not None and catalog.sellers[row] == seller:
            return "same_seller"
    if to_positive > max_similarity:
        return "near_duplicate"
    if score > pos_score * (1 - margin):
        return "margin"
    return None
