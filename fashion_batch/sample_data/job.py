"""The `sample-data` job: `run(SampleDataConfig(...))` writes the catalog, triplets and queries.

Written under `output`: `catalog/part-NNNNN.parquet`, `triplets/{train,eval}.parquet` and
`queries.jsonl` (held-out queries in every style of styles.py, each with its `style` and the ids
of its relevant listings; `train --eval-queries ... --eval-catalog catalog/` searches the whole
catalog with them; `embed --probe-queries queries.jsonl` is the quality gate's probe set).
Training triplets use neither the held-out combinations, nor the
eval-only query styles, nor the listings of a held-out share of the brands.

One `numpy.random.default_rng(seed)` drives everything in a fixed order (catalog, dirt, held-out
combinations, queries, held-out brands, eval triplets, train triplets), and nothing depends on
`hash()` or set order, so the same (listings, seed, files) gives byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion_batch.options import option
from fashion_batch.sample_data.catalog import draw_catalog, listing_text, write_catalog
from fashion_batch.sample_data.dirt import DIRTY_RATES, UNEMBEDDABLE, add_dirt
from fashion_batch.sample_data.styles import QUERY_STYLES, TRAIN_STYLES
from fashion_batch.sample_data.triplets import (
    attribute_combos,
    draw_queries,
    draw_triplets,
    write_queries,
    write_triplets,
)


@dataclass
class SampleDataConfig:
    """Settings of one `sample-data` run; the CLI builds it and nothing else."""

    output: str = option(help="local directory to write into")
    listings: int = option(20000, help="catalog rows in all, dirty rows included")
    seed: int = option(0, help="random seed")
    files: int = 8  # catalog Parquet files; rows are split evenly over them

    def __post_init__(self):
        if self.listings < 50:
            raise ValueError(f"listings must be at least 50, got {self.listings}")
        if self.files < 1:
            raise ValueError(f"files must be at least 1, got {self.files}")
        if self.files > self.listings:
            raise ValueError(f"files ({self.files}) must not exceed listings ({self.listings})")


def run(config: SampleDataConfig) -> dict:
    """Write the catalog, the triplets and the held-out queries; return a summary.

    Sizes scale with the catalog: for 20,000 listings about 2,000 train and 300 eval triplets
    and 300 queries; never fewer than 40, 10 and 10 (as far as a small catalog allows queries).
    """
    n = config.listings
    out = Path(config.output).expanduser()
    rng = np.random.default_rng(config.seed)
    columns, codes = draw_catalog(rng, n)
    dirty = add_dirt(rng, columns, codes)
    catalog = write_catalog(columns, out / "catalog", config.files)

    kinds = list(DIRTY_RATES)
    clean_rows = np.flatnonzero(dirty < 0)
    dropped = np.isin(dirty, [kinds.index(k) for k in UNEMBEDDABLE])
    combos = attribute_combos(rng, codes, clean_rows, np.flatnonzero(~dropped))
    sizes = columns["size"]
    queries = draw_queries(rng, combos, columns["listing_id"], sizes, min(300, max(10, n // 40)))
    held_brands = _held_out_brands(rng, columns["brand"], clean_rows)

    def texts(row: int) -> str:
        return listing_text(columns["title"][row], columns["description"][row])

    held = [c for c in combos if c.held_out]
    count = min(300, max(10, n * 3 // 200))
    evals = draw_triplets(rng, held, count, texts, codes, clean_rows, sizes, QUERY_STYLES)
    # Training sees neither the held-out combinations, nor the held-out query styles, nor any
    # listing of a held-out brand (as positive or negative).
    train_rows = clean_rows[[columns["brand"][r] not in held_brands for r in clean_rows.tolist()]]
    train = [c for c in combos if not c.held_out]
    count = min(2000, max(40, n // 10))
    train = draw_triplets(rng, train, count, texts, codes, train_rows, sizes, TRAIN_STYLES)
    held_strings = {q["query"] for q in queries} | {t[0] for t in evals}  # membership only
    train = [t for t in train if t[0] not in held_strings]

    (out / "triplets").mkdir(parents=True, exist_ok=True)
    write_triplets(train, out / "triplets" / "train.parquet")
    write_triplets(evals, out / "triplets" / "eval.parquet")
    write_queries(queries, out / "queries.jsonl")
    return {
        "output": str(out),
        "listings": n,
        "catalog_files": catalog,
        "dirty_rows": {k: int((dirty == i).sum()) for i, k in enumerate(kinds)},
        "train_triplets": len(train),
        "eval_triplets": len(evals),
        "queries": len(queries),
        "query_styles": {s: sum(q["style"] == s for q in queries) for s in QUERY_STYLES},
        "held_out_brands": sorted(held_brands),
        "triplets": [
            str(out / "triplets" / "train.parquet"),
            str(out / "triplets" / "eval.parquet"),
        ],
        "queries_path": str(out / "queries.jsonl"),
    }


HELD_OUT_BRANDS = 0.2  # share of the brands whose listings training never sees


def _held_out_brands(rng, brands: list, clean_rows: np.ndarray) -> set[str]:
    """A seeded share of the clean rows' brands, held out from training (sorted first, so the
    draw does not depend on set order)."""
    names = sorted({brands[r] for r in clean_rows.tolist()})
    count = min(round(HELD_OUT_BRANDS * len(names)), max(0, len(names) - 1))
    return {names[i] for i in rng.permutation(len(names))[:count].tolist()}  # membership only
