"""Benchmark catalogs in three shapes, from a vocabulary of their own (not sample-data's).

    short   ~25 tokens: a title and a one-line note, what most marketplace rows look like
    long    ~200 tokens: a seller who writes a paragraph (condition, measurements, shipping)
    mixed   log-normal word counts with a tail past the model's max_seq_length

The job under test was never tuned on these words: they come from a second-hand / vintage shop
register (condition grades, measurements in cm, care and shipping notes) unlike sample-data's
retail-feed and resale tables. A few dozen hand-written listings (benchmarks/data/) lead every
catalog. Rows are deterministic for a (shape, n, seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHAPES = ("short", "long", "mixed")
DATA = Path(__file__).resolve().parent / "data"

_GARMENTS = (
    "anorak",
    "blazer",
    "bomber",
    "boilersuit",
    "cardigan",
    "chinos",
    "clogs",
    "corduroys",
    "culottes",
    "duffle coat",
    "dungarees",
    "espadrilles",
    "fleece",
    "gilet",
    "kilt",
    "kimono",
    "loafers",
    "mac",
    "moccasins",
    "overshirt",
    "parka",
    "peacoat",
    "pinafore",
    "polo",
    "poncho",
    "rollneck",
    "sarong",
    "shacket",
    "smock",
    "tabard",
    "tracksuit top",
    "trench",
    "tunic",
    "waistcoat",
    "windbreaker",
    "wrap skirt",
)
_MAKERS = (
    "Aldmoor",
    "Brightwell & Co",
    "Cassock",
    "Dunlin",
    "Everleigh",
    "Fernhollow",
    "Gilt Moth",
    "Harrowgate",
    "Isleworth",
    "Juniper Row",
    "Kestrel Mill",
    "Larkspur",
    "Mereside",
    "Northfold",
    "Oxbow",
    "Penhallow",
    "Quillon",
    "Rookery",
    "Saltmarsh",
    "Tidewater",
)
_COLOURS = (
    "mustard",
    "teal",
    "oxblood",
    "sage",
    "ecru",
    "charcoal marl",
    "petrol blue",
    "rust",
    "lilac",
    "forest green",
    "butter yellow",
    "slate",
    "tan",
    "cobalt",
    "plum",
    "stone",
)
_FABRICS = (
    "boiled wool",
    "waxed cotton",
    "moleskin",
    "seersucker",
    "tweed",
    "needlecord",
    "ripstop",
    "lambswool",
    "Harris tweed",
    "chambray",
    "bouclé",
    "ponte jersey",
    "Tencel",
    "hemp blend",
)
_GRADES = (
    "deadstock with tags",
    "excellent pre-loved condition",
    "gently worn, no flaws",
    "good vintage condition with light pilling",
    "well loved, small mend at the cuff",
    "fair condition, faded at the seams",
    "worn twice, as new",
)
_NOTES = (
    "Measurements taken flat: pit to pit {a} cm, length {b} cm.",
    "Fits like a modern {size}; model is 178 cm and usually wears {size}.",
    "Hand wash cold or dry clean only; do not tumble.",
    "Ships within two working days in recycled packaging.",
    "Bundle two or more items from my shop for a discount.",
    "Smoke-free and pet-free home, stored folded in a cedar chest.",
    "Original buttons, all present; lining intact with no tears.",
    "Slight colour variation in natural light, see the last photo.",
    "Made in Portugal according to the care label.",
    "Sleeve {c} cm from shoulder seam, waist {d} cm laid flat.",
    "Heavier than it looks, perfect for layering through autumn.",
    "Offers welcome but please be reasonable; no swaps.",
    "Zip runs smoothly and the press studs all close firmly.",
    "Label size {size} but runs a little large, check measurements.",
)
_SIZES = ("XS", "S", "M", "L", "XL", "UK 8", "UK 10", "UK 12", "UK 14", "EU 40", "EU 44")


def _sentence(rng: np.random.Generator) -> str:
    note = _NOTES[rng.integers(len(_NOTES))]
    return note.format(
        a=rng.integers(40, 70),
        b=rng.integers(55, 110),
        c=rng.integers(50, 70),
        d=rng.integers(30, 50),
        size=_SIZES[rng.integers(len(_SIZES))],
    )


def _listing(rng: np.random.Generator, words: int) -> tuple[str, str]:
    """(title, description) with a description of about `words` words."""
    pick = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
    title = f"{pick(_MAKERS)} {pick(_COLOURS)} {pick(_FABRICS)} {pick(_GARMENTS)}"
    parts = [pick(_GRADES).capitalize() + "."]
    while sum(len(p.split()) for p in parts) < words:
        parts.append(_sentence(rng))
    text = " ".join(parts).split()[: max(words, 1)]
    return title, " ".join(text)


def word_counts(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Description words per row: short ~10, long ~150, mixed log-normal (median ~35, tail)."""
    if shape == "short":
        return rng.integers(6, 14, n)
    if shape == "long":
        return rng.integers(135, 165, n)
    if shape == "mixed":
        return np.clip(rng.lognormal(np.log(35), 0.9, n), 3, 400).astype(int)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def handwritten() -> list[dict]:
    """Listings written by hand (benchmarks/data/listings.jsonl): title and description."""
    path = DATA / "listings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rows(shape: str, n: int, seed: int = 0) -> dict[str, list]:
    """n catalog rows: listing_id, title, description (hand-written ones first)."""
    rng = np.random.default_rng([seed, SHAPES.index(shape)])
    hand = handwritten()[:n]
    titles = [h["title"] for h in hand]
    descriptions = [h["description"] for h in hand]
    for words in word_counts(shape, n - len(hand), rng):
        title, description = _listing(rng, int(words))
        titles.append(title)
        descriptions.append(description)
    ids = (np.arange(n, dtype=np.int64) * 7919 + 10**12).tolist()  # sparse, wide ids
    return {"listing_id": ids, "title": titles, "description": descriptions}


def write(shape: str, n: int, out: Path, seed: int = 0, files: int = 4) -> str:
    """Write the catalog as `files` Parquet files under out/; return the dir."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    if len(list(out.glob("*.parquet"))) == files:
        return str(out)
    table = pa.table(rows(shape, n, seed))
    step = -(-n // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), out / f"listings-{i:03d}.parquet")
    return str(out)


def token_stats(catalog: str, tokenizer_dir: str) -> dict:
    """Mean / p50 / p95 / max tokens of `title. description` under the model's tokenizer."""
    import pyarrow.dataset as ds
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    t = ds.dataset(catalog).to_table(columns=["title", "description"]).to_pydict()
    texts = [f"{a}. {b}" for a, b in zip(t["title"], t["description"], strict=True)]
    lengths = np.array([len(e.ids) for e in tok.encode_batch(texts)])
    return {
        "mean": float(lengths.mean()),
        "p50": float(np.percentile(lengths, 50)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
    }
