"""Attribute combinations, the held-out shopper queries and the training triplets built on them.

A query or a triplet anchor names attributes ("vintage jacket", "black wool coat"), so its
relevant listings are exactly the rows that carry them: ground truth nobody had to label. A share
(`HOLDOUT_FRACTION`) of the category + style / colour / material combinations is held out: eval
triplets and queries are drawn from those, train triplets only from the rest, so evaluation
measures whether the model carries what it learned over to combinations it never saw. Queries
are written in several styles (styles.py), and training anchors never use the held-out ones, so
evaluation also measures wordings the model never trained on, not only new combinations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_batch.sample_data.styles import styles_for, write
from fashion_batch.sample_data.vocabulary import CATEGORIES, COLOURS, MATERIALS, STYLES

TRIPLET_SCHEMA = pa.schema([(c, pa.string()) for c in ("anchor", "positive", "negative")])
# Query kinds: the attributes a query names. The first two are the split key, so "vintage black
# jacket" is held out exactly when "vintage jacket" is.
KINDS = (
    ("category", "style"),
    ("category", "colour"),
    ("category", "material"),
    ("category", "style", "colour"),
)
_ATTR_SIZES = {"category": len(CATEGORIES), "style": len(STYLES)}
_ATTR_SIZES |= {"colour": len(COLOURS), "material": len(MATERIALS)}
HOLDOUT_FRACTION = 0.25
MIN_RELEVANT, MAX_RELEVANT = 3, 200
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class Combo:
    """One query's attributes and the rows that carry them."""

    kind: tuple[str, ...]
    values: tuple[int, ...]
    held_out: bool
    clean: np.ndarray  # clean rows: triplet positives
    relevant: np.ndarray  # every row the embed job keeps: query ground truth

    def query(self, style: str, u: float, size: str = "") -> str:
        """This combination asked for in `style` (styles.py); `u` picks the phrasing."""
        return write(style, self.kind, self.values, u, size)


def _key(codes: dict, attrs: tuple[str, ...]) -> np.ndarray:
    key = np.zeros(len(codes["category"]), dtype=np.int64)
    for a in attrs:
        key = key * _ATTR_SIZES[a] + codes[a]
    return key


def _decode(key: int, attrs: tuple[str, ...]) -> tuple[int, ...]:
    values = []
    for a in reversed(attrs):
        key, value = divmod(key, _ATTR_SIZES[a])
        values.append(value)
    return tuple(reversed(values))


def _groups(key: np.ndarray, rows: np.ndarray) -> dict[int, np.ndarray]:
    """{key: its rows, ascending} for the given rows, keys ascending."""
    rows = rows[np.argsort(key[rows], kind="stable")]
    keys, starts = np.unique(key[rows], return_index=True)
    return dict(zip(keys.tolist(), np.split(rows, starts[1:]), strict=True))


def attribute_combos(
    rng, codes: dict, clean_rows: np.ndarray, kept_rows: np.ndarray
) -> list[Combo]:
    """Every attribute combination present in the catalog, with its train/held-out side.

    Held out are a quarter of the split keys (category + style, colour or material), so a
    held-out query is a combination the model never trained on, not just a new wording.
    """
    held: dict[tuple[str, ...], set[int]] = {}  # membership only
    for family in dict.fromkeys(kind[:2] for kind in KINDS):
        keys = np.unique(_key(codes, family)[kept_rows])
        count = min(max(1, round(HOLDOUT_FRACTION * len(keys))), max(1, len(keys) - 1))
        held[family] = set(keys[rng.permutation(len(keys))[:count]].tolist())
    combos = []
    for kind in KINDS:
        key = _key(codes, kind)
        clean = _groups(key, clean_rows)
        for k, rows in _groups(key, kept_rows).items():
            values = _decode(k, kind)
            split_key = values[0] * _ATTR_SIZES[kind[1]] + values[1]
            held_out = split_key in held[kind[:2]]
            combos.append(Combo(kind, values, held_out, clean.get(k, _EMPTY), rows))
    return combos


def _round_robin(rng, groups: list[list[Combo]]) -> list[Combo]:
    """Shuffle each kind's combos and interleave them, so every kind gets its share."""
    shuffled = [[g[i] for i in rng.permutation(len(g))] for g in groups]
    longest = max((len(g) for g in shuffled), default=0)
    return [g[i] for i in range(longest) for g in shuffled if i < len(g)]


def draw_queries(rng, combos: list[Combo], ids: list, sizes: list, count: int) -> list[dict]:
    """Held-out queries with 3..200 relevant listings (fewer for small catalogs), each in a style
    drawn from those its kind allows (styles.py), the style recorded with the query. A `fit`
    query names a size, so its relevant listings are the combination's rows of that size.
    Combinations are visited round-robin by kind, twice if one pass gives too few queries."""
    held = [[c for c in combos if c.held_out and c.kind == kind] for kind in KINDS]
    picked = _round_robin(
        rng, [[c for c in g if MIN_RELEVANT <= len(c.relevant) <= MAX_RELEVANT] for g in held]
    )
    if len(picked) < count:  # a small catalog has few combinations with 3+ listings
        picked += _round_robin(
            rng, [[c for c in g if len(c.relevant) < MIN_RELEVANT] for g in held]
        )
    queries: list[dict] = []
    seen: set[str] = set()  # membership only
    for combo in picked + picked:
        if len(queries) == count:
            break
        styles = styles_for(combo.kind)
        style = styles[rng.integers(len(styles))]
        rows = combo.relevant.tolist()
        size = sizes[rows[rng.integers(len(rows))]]
        query = combo.query(style, rng.random(), size)
        if query in seen:
            continue
        seen.add(query)
        if style == "fit":
            rows = [r for r in rows if sizes[r] == size]
        queries.append(
            {
                "query_id": f"q{len(queries) + 1:04d}",
                "query": query,
                "style": style,
                "relevant_ids": sorted(ids[r] for r in rows),
            }
        )
    return queries


def _negative(rng, combo: Combo, codes: dict, clean_rows: np.ndarray, by_attr: dict) -> int:
    """A clean row that does not match `combo`, preferably a hard one.

    Mostly the same category with another style, colour or material; else the same style,
    colour or material in another category; rarely any row.
    """
    want = dict(zip(combo.kind, combo.values, strict=True))
    draw = rng.random()
    attr = "category" if draw < 0.6 else combo.kind[1]
    pool = by_attr[attr].get(want[attr], clean_rows) if draw < 0.85 else clean_rows
    for _ in range(20):
        row = int(pool[rng.integers(len(pool))])
        if any(codes[a][row] != v for a, v in want.items()):
            return row
    matching = np.logical_and.reduce([codes[a][clean_rows] == v for a, v in want.items()])
    others = clean_rows[~matching]
    return int(others[rng.integers(len(others))])


def draw_triplets(
    rng, combos: list[Combo], count: int, texts, codes, clean_rows, sizes, styles: tuple[str, ...]
) -> list[tuple]:
    """`count` (anchor, positive, negative) rows over `clean_rows`; kinds equally likely, then
    combos; each anchor written in one of `styles` (those its kind allows). The positive is
    drawn first, so a `fit` anchor names the positive's own size."""
    allowed = np.zeros(len(codes["category"]), dtype=bool)
    allowed[clean_rows] = True
    combos = [
        Combo(c.kind, c.values, c.held_out, c.clean[allowed[c.clean]], c.relevant) for c in combos
    ]
    groups = [[c for c in combos if c.kind == kind and len(c.clean)] for kind in KINDS]
    groups = [g for g in groups if g]
    by_attr = {a: _groups(codes[a], clean_rows) for a in _ATTR_SIZES}
    rows = []
    for _ in range(count if groups else 0):
        group = groups[rng.integers(len(groups))]
        combo = group[rng.integers(len(group))]
        positive = int(combo.clean[rng.integers(len(combo.clean))])
        usable = [s for s in styles if s in styles_for(combo.kind)]
        style = usable[rng.integers(len(usable))]
        anchor = combo.query(style, rng.random(), sizes[positive])
        negative = _negative(rng, combo, codes, clean_rows, by_attr)
        rows.append((anchor, texts(positive), texts(negative)))
    return rows


def write_triplets(rows: list[tuple], path: Path) -> None:
    columns = list(zip(*rows, strict=True)) if rows else [[], [], []]
    table = pa.table(dict(zip(TRIPLET_SCHEMA.names, columns, strict=True)), schema=TRIPLET_SCHEMA)
    pq.write_table(table, path)


def write_queries(queries: list[dict], path: Path) -> None:
    """One JSON object per line, non-ASCII kept as is."""
    lines = [json.dumps(q, ensure_ascii=False) + "\n" for q in queries]
    path.write_text("".join(lines), encoding="utf-8")
