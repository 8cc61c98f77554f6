"""Clean listings drawn as attributes, their text written from them, and the catalog part files.

Every listing is first drawn as attributes (category, style, colour, retail or resale, condition)
and its title and description are then written from those attributes, so the attributes are the
ground truth that queries and triplets are built on. A listing's text needs many small random
choices; they come from one block of uniforms per row, drawn in a single generator call, so the
generator's sequence does not depend on which phrasings a row happened to use.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_batch.sample_data.vocabulary import (
    CATEGORIES,
    CHATTER,
    COLOUR_WEIGHTS,
    COLOUR_WORDS,
    COLOURS,
    CONDITION_LINES,
    CONDITION_P,
    CONDITION_PRICE,
    CONDITIONS,
    EMOJI,
    FIT_LINES,
    GENERAL_BRANDS,
    MATERIALS,
    PREMIUM_BRANDS,
    RETAIL_BRANDS,
    SIZE_PHRASES,
    STYLES,
    pick,
)

SCHEMA = pa.schema(
    [("listing_id", pa.int64())]
    + [(c, pa.string()) for c in ("title", "description", "brand", "category", "colour")]
    + [(c, pa.string()) for c in ("material", "size", "condition")]
    + [("price", pa.float64())]
)
_PART = re.compile(r"part-\d{5}\.parquet")
_MATERIAL_INDEX = {m: i for i, m in enumerate(MATERIALS)}


def listing_text(title: str | None, description: str | None) -> str:
    """A listing as the default template "{title}. {description}" renders it (clean rows)."""
    return f"{title}. {description}"


def _listing(cat: int, style: int, colour: int, retail: bool, condition: int, u: list[float]):
    """(title, description, brand, material, size) of one listing, written from its attributes.

    `u` holds this row's 16 uniform draws, so writing text costs no generator call per row.
    """
    c, s = CATEGORIES[cat], STYLES[style]
    material, size = pick(c.materials, u[0]), pick(c.sizes, u[1])
    colour_word = pick(COLOUR_WORDS[colour], u[2])
    i = int(u[6] * len(c.features))
    j = (i + 1 + int(u[7] * (len(c.features) - 1))) % len(c.features)
    if retail:  # feed copy: "Zara black flowy linen pants. Wide leg. Cuffed hem. ..."
        brand = pick(RETAIL_BRANDS, u[3])
        fabric = f" {material}" if u[5] < 0.5 else ""
        title = f"{brand} {colour_word} {pick(s.adjectives, u[4])}{fabric} {c.name}"
        made = f"Made of {material}." if u[9] < 0.5 else f"{material.capitalize()} blend."
        description = f"{c.features[i]}. {c.features[j]}. {pick(s.lines, u[8])}. {made}"
        return title, description, brand, material, size
    # Resale: the seller's words; the style shows mostly in the brand and the trailing tags.
    brand = pick(s.brands, u[3]) if u[4] < 0.7 else pick(GENERAL_BRANDS, u[3])
    alias, pattern = pick(c.aliases, u[5]), int(u[8] * 4)
    if pattern == 0:
        vintage = "Vintage " if s.name == "vintage" else ""
        title = f"{vintage}{brand} {alias.title()}  {pick(SIZE_PHRASES, u[9]).format(size)}"
    elif pattern == 1:
        title = f"{brand} {alias} - size {size} - {CONDITIONS[condition]}"
    elif pattern == 2:
        title = f"{colour_word.capitalize()} {alias} w/ {c.features[i].lower()}"
    else:
        title = f"{brand} {colour_word} {material} {alias}"
    parts = [
        pick(CONDITION_LINES[condition], u[10]),
        pick(FIT_LINES, u[11]).format(size),
        f"{colour_word.capitalize()} {material}. {pick(s.seller, u[12])}.",
    ]
    if u[13] < 0.5:
        parts.append(pick(CHATTER, u[13] * 2))
    tags = [re.sub(r"\W", "", brand.lower()), *s.tags[int(u[14] * 3) :][:2], alias.lower()]
    description = " ".join(parts) + "  " + " ".join(tags)
    if u[15] < 0.2:
        emoji = " " + pick(EMOJI, u[15] * 5)
        title, description = (
            (title + emoji, description) if u[15] < 0.08 else (title, description + emoji)
        )
    return title, description, brand, material, size


def draw_catalog(rng: np.random.Generator, n: int) -> tuple[dict[str, list], dict[str, np.ndarray]]:
    """Clean catalog columns (lists, in `SCHEMA` order) and each row's attribute codes."""
    codes = {
        "category": rng.choice(len(CATEGORIES), n, p=_normalized([c.weight for c in CATEGORIES])),
        "style": rng.choice(len(STYLES), n, p=_normalized([s.weight for s in STYLES])),
        "colour": rng.choice(len(COLOURS), n, p=_normalized(list(COLOUR_WEIGHTS))),
    }
    retail = rng.random(n) < 0.3  # feed rows are always new with tags
    condition = np.where(retail, 0, rng.choice(len(CONDITIONS), n, p=CONDITION_P))
    # Unique, positive and in no relation to file order, so nothing can rely on ordering.
    ids = rng.choice(9 * max(n, 100_000), n, replace=False) + 1_000_000
    uniforms = rng.random((n, 16)).tolist()
    noise = rng.normal(0.0, 0.35, n)
    attrs = zip(
        codes["category"].tolist(),
        codes["style"].tolist(),
        codes["colour"].tolist(),
        retail.tolist(),
        condition.tolist(),
        uniforms,
        strict=True,
    )
    rows = [_listing(*a) for a in attrs]
    title, description, brand, material, size = (list(col) for col in zip(*rows, strict=True))
    codes["material"] = np.array([_MATERIAL_INDEX[m] for m in material])
    premium = np.array([b in PREMIUM_BRANDS for b in brand])
    price = np.array([c.price for c in CATEGORIES])[codes["category"]] * np.where(premium, 2.2, 1)
    price = price * CONDITION_PRICE[condition] * np.exp(noise)
    price = np.where(retail, np.floor(price) + 0.99, np.round(price))
    columns = {
        "listing_id": ids.tolist(),
        "title": title,
        "description": description,
        "brand": brand,
        "category": [CATEGORIES[c].name for c in codes["category"].tolist()],
        "colour": [COLOURS[c] for c in codes["colour"].tolist()],
        "material": material,
        "size": size,
        "condition": [CONDITIONS[c] for c in condition.tolist()],
        "price": np.round(price, 2).tolist(),
    }
    return columns, codes


def _normalized(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()


def write_catalog(columns: dict[str, list], directory: Path, files: int) -> list[str]:
    """Split the catalog evenly into `files` part files; drop parts a bigger earlier run left."""
    table = pa.table(columns, schema=SCHEMA)
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"part-{i:05d}.parquet" for i in range(files)]
    for path in sorted(directory.iterdir()):
        if _PART.fullmatch(path.name) and path.name not in names:
            path.unlink()
    base, extra = divmod(len(table), files)
    paths, start = [], 0
    for i, name in enumerate(names):
        length = base + (i < extra)
        pq.write_table(table.slice(start, length), directory / name)
        paths.append(str(directory / name))
        start += length
    return paths
