"""Synthetic marketplace catalog, training triplets and held-out queries (`sample-data`).

Why synthetic, and why this shape: embed, train and evaluate need data that reads like the seed's
(retailer feed copy next to resale listings with hashtags and emoji), that carries the dirt real
feeds carry (so every cleaning and quarantine path runs), and that has ground truth nobody had to
label. So every listing is first drawn as attributes (category, style, colour, material, brand,
size, condition) and its text is then written from them: a query built from attributes has a known
relevant set, and a model fine-tuned on the train triplets can learn that "Carhartt ... reinforced
stitching" means workwear and carry that over to queries it never saw.

Written under `output`: `catalog/part-NNNNN.parquet`, `triplets/{train,eval}.parquet` and
`queries.jsonl`. One `numpy.random.default_rng(seed)` drives everything in a fixed order, and
nothing depends on `hash()` or set order, so the same (listings, seed, files) gives byte-identical
files.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_batch.options import option

# ---------------------------------------------------------------------------- vocabulary
# One spec string per entry keeps ~300 words of vocabulary readable: fields split on ";",
# lists on "|".


@dataclass(frozen=True)
class _Category:
    name: str
    plural: str
    unit: str  # what "a ..." reads as: "jacket", "pair of jeans"
    weight: float
    price: float  # typical resale price, USD
    sizes: tuple[str, ...]
    aliases: tuple[str, ...]  # what resale sellers call it
    materials: tuple[str, ...]
    features: tuple[str, ...]  # retailer-copy sentences


@dataclass(frozen=True)
class _Style:
    name: str
    weight: float
    brands: tuple[str, ...]  # brands that signal the style (most resale rows use one)
    adjectives: tuple[str, ...]  # retailer title adjective
    lines: tuple[str, ...]  # retailer description sentence
    seller: tuple[str, ...]  # resale description sentence
    tags: tuple[str, ...]  # resale trailing hashtag-like words
    query: tuple[str, ...]  # shopper adjectives
    occasions: tuple[str, ...]
    mood: str  # a shopper's vaguer request; "{}" is the category unit


def _words(spec: str) -> tuple[str, ...]:
    return tuple(spec.split("|"))


def _parse(cls, spec: str):
    values = []
    for field, raw in zip(fields(cls), spec.split(";"), strict=True):
        kind = str(field.type)
        values.append(float(raw) if kind == "float" else _words(raw) if "tuple" in kind else raw)
    return cls(*values)


_LETTER = "XS|S|S|M|M|M|L|L|L|XL|XXL"
_WAIST = "24|26|27|28|29|30|30|31|32|32|33|34|36"
_SHOE = "US 6|US 7|US 8|US 8.5|US 9|US 9.5|US 10|US 11|US 12|EU 38|EU 40"
CATEGORIES = tuple(
    _parse(_Category, s)
    for s in (
        f"jeans;jeans;pair of jeans;10;38;{_WAIST};jeans|denim jeans|denim;denim;High-rise "
        "five-pocket design|Straight leg|Zip fly and button closure|Raw-cut hem|Faded wash",
        f"dress;dresses;dress;9;45;{_LETTER};dress|midi dress|mini dress;cotton|linen|silk|"
        "viscose|polyester;V-neckline with adjustable straps|Tiered skirt|Invisible side zip "
        "closure|Flared hem|Fitted waist",
        f"jacket;jackets;jacket;9;70;{_LETTER};jacket|zip-up jacket|jkt;denim|leather|suede|"
        "nylon|canvas|fleece|corduroy;Lapel collar and long sleeves|Front zip closure|Flap "
        "pockets at chest|Adjustable cuffs|Ribbed trims",
        f"shirt;shirts;shirt;7;28;{_LETTER};shirt|button-down shirt|button up;cotton|linen|"
        "flannel|denim|silk;Spread collar and long sleeves|Front button closure|Chest patch "
        "pocket|Side vents at hem|Curved hem",
        f"t-shirt;t-shirts;t-shirt;9;20;{_LETTER};t-shirt|tee|t shirt;cotton|jersey|linen;Round "
        "neck and short sleeves|Relaxed fit|Ribbed neckline|Straight hem|Printed graphic at front",
        f"sweater;sweaters;sweater;8;42;{_LETTER};sweater|jumper|knit sweater;wool|cashmere|"
        "merino|cotton|mohair;Crew neck and long sleeves|Ribbed cuffs and hem|Dropped shoulders|"
        "Cable-knit texture|Soft brushed finish",
        f"skirt;skirts;skirt;6;30;{_LETTER};skirt|midi skirt|mini skirt;denim|cotton|linen|silk|"
        "leather|corduroy;High waist|Side zip closure|A-line silhouette|Front slit|Elastic "
        "waistband",
        f"boots;boots;pair of boots;5;85;{_SHOE};boots|ankle boots|combat boots;leather|suede;"
        "Lace-up front|Side zip closure|Chunky lug sole|Pull tab at heel|Padded collar",
        f"sneakers;sneakers;pair of sneakers;6;60;{_SHOE};sneakers|trainers|kicks;leather|canvas|"
        "suede|mesh;Lace-up front|Cushioned insole|Rubber outsole|Padded tongue|Perforated toe",
        "bag;bags;bag;5;55;One Size;bag|tote bag|crossbody bag;leather|canvas|nylon|suede;"
        "Adjustable shoulder strap|Magnetic snap closure|Interior zip pocket|Top handles|Lined "
        "interior",
        f"coat;coats;coat;4;95;{_LETTER};coat|overcoat|parka;wool|cashmere|nylon|leather;Notched "
        "lapel collar|Buttoned cuffs|Welt pockets at hip|Back vent|Double-breasted closure",
        f"hoodie;hoodies;hoodie;6;35;{_LETTER};hoodie|hooded sweatshirt|pullover hoodie;cotton|"
        "fleece;Adjustable drawstring hood|Kangaroo pocket|Ribbed cuffs and hem|Brushed fleece "
        "interior|Dropped shoulders",
        f"pants;pants;pair of pants;7;34;{_WAIST};pants|trousers|slacks;cotton|linen|wool|"
        "corduroy|canvas|polyester;Mid-rise with interior elastic waistband|Front pleats detail|"
        "Wide leg|Side pockets and back welt pockets|Cuffed hem",
        f"top;tops;top;8;22;{_LETTER};top|blouse|cami top;cotton|silk|linen|viscose|polyester;"
        "Cowl neckline|Adjustable tie front closure|Thin straps|Ruffle trim|Cropped length",
        f"shorts;shorts;pair of shorts;4;24;{_WAIST};shorts|cutoffs|cut-off shorts;denim|cotton|"
        "linen|nylon;Elastic waistband|Rolled hem|Side pockets|Five-pocket design|Relaxed fit",
        f"blazer;blazers;blazer;3;65;{_LETTER};blazer|sport coat|suit jacket;wool|linen|cotton|"
        "velvet|tweed;Notched lapel collar|Buttoned cuffs|Flap pockets at hip|Single-button "
        "closure|Shoulder pads",
    )
)
STYLES = tuple(
    _parse(_Style, s)
    for s in (
        "vintage;14;Levi's|Harley Davidson|Wrangler|Champion|Pendleton|Polo Ralph Lauren;washed|"
        "retro|heritage;Vintage-inspired washed finish|Inspired by archive pieces from the 90s;"
        "Nice worn-in color, relaxed fit|Rare find, true vintage|Perfectly faded with age;vintage|"
        "retro|90s|thrifted|faded|y2k;vintage|retro|90s;with a worn-in feel|like a thrift store "
        "find;A {} with some old-school soul, sweet and vintage with just the right amount of "
        "flirt.",
        "streetwear;12;Supreme|Stüssy|Nike|Carhartt WIP|Palace|BAPE|Vans;oversized|graphic|boxy;"
        "Oversized boxy fit|Bold logo print at front;Super clean, hard to find|Message before "
        "purchasing|Authentic, from the drop;streetwear|skater|hype|grail|y2k|drip;streetwear|"
        "hypebeast|skater;for skating|to wear to a sneaker drop;A {} that turns heads on the "
        "street without trying too hard.",
        "minimal;13;COS|Uniqlo|Everlane|Arket|Theory|Jil Sander;clean-lined|relaxed|structured;"
        "Clean lines with no visible logos|A timeless wardrobe essential;Simple and easy to style|"
        "Goes with everything|Neutral and timeless;minimal|basics|capsule|neutral|essentials|"
        "timeless;minimalist|understated|simple;for the office|for a capsule wardrobe;A quiet but "
        "confident {} with just enough shape.",
        "boho;12;Free People|Anthropologie|Spell|Reformation|Urban Outfitters;flowy|embroidered|"
        "tiered;Embroidered details and a relaxed drape|Feminine flowy silhouette;Such a cute "
        "feminine piece, great for summer|So dreamy and flowy|Perfect festival piece;boho|"
        "festival|hippie|flowy|cottagecore|romantic;boho|bohemian|flowy;for a summer festival|"
        "for a beach wedding;A free-spirited {} for sunny days and flowy moods.",
        "preppy;12;Ralph Lauren|J.Crew|Vineyard Vines|Brooks Brothers|Tommy Hilfiger|Lacoste;"
        "classic|tailored|polished;Embroidered logo at chest|A classic cut with a tailored finish;"
        "Classic fit, looks great with chinos|Timeless preppy staple|Crisp and clean;preppy|"
        "classic|oldmoney|ivyleague|nautical|countryclub;preppy|classic|old money;for a country "
        "club brunch|for a summer wedding;A polished, put-together {} that still feels easy.",
        "workwear;11;Carhartt|Dickies|Wrangler|Red Wing|Filson|Dr. Martens;utility|heavy-duty|"
        "rugged;Reinforced triple stitching at stress points|Built tough for everyday work;Broken "
        "in but tons of life left|Tough as nails|Real work piece, some paint marks;workwear|"
        "utility|rugged|workcore|duck|chore;rugged workwear|heavy-duty|utility;for the job site|"
        "that can take a beating;A {} tough enough for real work and long days.",
        "athleisure;14;Lululemon|Nike|Adidas|Alo Yoga|Gymshark|Athleta|Hollister;stretch|"
        "performance|sporty;Sweat-wicking four-way stretch|Designed to move with you;Super comfy "
        "and stretchy|Great for the gym or lounging|Soft and breathable;athleisure|gym|yoga|sporty|"
        "activewear|comfy;comfortable|sporty|athletic;for lounging|for the gym|for yoga;A {} I can "
        "move in all day, from yoga to errands.",
        "outdoor;12;Patagonia|The North Face|Columbia|Arc'teryx|L.L.Bean;weather-resistant|"
        "technical|insulated;Water-repellent finish|Packable and trail-ready;Perfect for hikes and "
        "camping|Warm and cozy, fits true to size|Trail tested, still great;outdoors|gorpcore|"
        "hiking|camping|trail|pnw;outdoor|gorpcore|hiking;for hiking|for a rainy trail;A {} ready "
        "for bad weather and long trails.",
    )
)
_COLOURS = {  # name: (weight, words sellers use for it)
    "black": (16, "black|jet black"),
    "white": (9, "white|optic white|bright white"),
    "navy": (8, "navy|navy blue|dark navy"),
    "grey": (9, "grey|gray|charcoal|heather grey"),
    "beige": (6, "beige|sand|stone"),
    "brown": (7, "brown|chocolate brown|espresso"),
    "olive": (4, "olive|army green|khaki green"),
    "red": (5, "red|cherry red|scarlet"),
    "pink": (6, "pink|blush|baby pink"),
    "blue": (8, "blue|light blue|sky blue"),
    "green": (4, "green|forest green|emerald"),
    "cream": (5, "cream|ivory|oyster-white|off-white"),
    "burgundy": (3, "burgundy|wine|maroon"),
    "camel": (3, "camel|tan|caramel"),
}
COLOURS = tuple(_COLOURS)
COLOUR_WORDS = tuple(tuple(words.split("|")) for _, words in _COLOURS.values())
MATERIALS = tuple(dict.fromkeys(m for c in CATEGORIES for m in c.materials))
CONDITIONS = ("new with tags", "new without tags", "like new", "excellent", "very good", "good")
CONDITIONS += ("fair",)
_CONDITION_P = np.array([8, 7, 15, 25, 22, 17, 6]) / 100
_CONDITION_PRICE = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.35])
_CONDITION_LINES = (
    ("New with tags!", "Brand new with tags, never worn.", "NWT, still in original packaging."),
    ("New without tags, never worn.", "NWOT, tried on once."),
    ("Like new condition.", "Worn once, like new."),
    ("Excellent condition - no flaws.", "Excellent used condition."),
    ("Very good condition. No flaws.", "Very good condition, gently worn."),
    ("Good condition, some signs of wear.", "Good used condition, light pilling."),
    ("Fair condition, see photos for flaws.", "Well loved, small stain on front."),
)
RETAIL_BRANDS = _words("Zara|Mango|H&M|COS|Uniqlo|Everlane|Madewell|J.Crew|Aritzia|& Other Stories")
GENERAL_BRANDS = _words(
    "Zara|H&M|Mango|Gap|Old Navy|Madewell|Abercrombie & Fitch|American Eagle|Levi's|Dr. Martens|"
    "Coach|Michael Kors|Banana Republic|Hollister|Shein|Victoria's Secret|The North Face|Nike|"
    "Ralph Lauren"
)
_PREMIUM = frozenset(  # membership only, never iterated
    _words(
        "Arc'teryx|Patagonia|Filson|Red Wing|Theory|Jil Sander|Ralph Lauren|Polo Ralph Lauren|"
        "Brooks Brothers|Supreme|BAPE|Palace|Reformation|Coach|Michael Kors|Dr. Martens|Lululemon|"
        "Alo Yoga"
    )
)
_SIZE_PHRASES = ("Adult {}", "size {}", "sz {}", "Size {}")
_FIT_LINES = ("Size {}, fits true to size.", "Tagged {} but fits a little oversized.")
_FIT_LINES += ("Measurements in pictures, tagged {}.", "Size {}. No flaws.")
_CHATTER = ("Bundle to save!", "No holds, no trades.", "Ships next day.", "Open to offers.")
_CHATTER += ("Smoke-free, pet-free home.", "Please don't ask me my lowest!")
_EMOJI = ("💕", "✨", "🔥", "🖤", "🌸", "🌿", "😍")
_BLANKS = ((None, None), ("   ", None), (None, " \n\t "), ("\u00a0", "  "), ("", ""))
_CONTROL_CHARS = ("\x00", "\x07", "\x1b", "\x7f")

SCHEMA = pa.schema(
    [("listing_id", pa.int64())]
    + [(c, pa.string()) for c in ("title", "description", "brand", "category", "colour")]
    + [(c, pa.string()) for c in ("material", "size", "condition")]
    + [("price", pa.float64())]
)
TRIPLET_SCHEMA = pa.schema([(c, pa.string()) for c in ("anchor", "positive", "negative")])
# Share of all rows per kind of dirt, 2% in all. Every kind gets at least one row, so even a
# 50-row sample exercises each cleaning and quarantine path.
DIRTY_RATES = {
    "missing_id": 0.0025,
    "blank_text": 0.0025,
    "duplicate_id_same_text": 0.0015,
    "duplicate_id_new_text": 0.0015,
    "html": 0.0035,
    "mojibake": 0.0035,
    "control_chars": 0.0025,
    "null_description": 0.0025,
}
# Rows the embed job quarantines; they are never relevant to a query.
UNEMBEDDABLE = ("missing_id", "blank_text", "duplicate_id_same_text", "duplicate_id_new_text")
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
_PART = re.compile(r"part-\d{5}\.parquet")
_CP1252 = [bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(256)]
_MATERIAL_INDEX = {m: i for i, m in enumerate(MATERIALS)}
_EMPTY = np.zeros(0, dtype=np.int64)


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


def listing_text(title: str | None, description: str | None) -> str:
    """A listing as the default template "{title}. {description}" renders it (clean rows)."""
    return f"{title}. {description}"


def mojibake(text: str) -> str:
    """UTF-8 bytes read as Windows-1252 ("💕" → "ðŸ’•"), as a CSV through the wrong codec does.

    Bytes cp1252 leaves undefined keep their code point (ftfy's "sloppy-windows-1252"), so
    `ftfy.fix_text` can always undo it.
    """
    return "".join(_CP1252[b] for b in text.encode("utf-8"))


# ---------------------------------------------------------------------------- catalog


def _pick(seq, u: float):
    return seq[int(u * len(seq))]


def _listing(cat: int, style: int, colour: int, retail: bool, condition: int, u: list[float]):
    """(title, description, brand, material, size) of one listing, written from its attributes.

    `u` holds this row's 16 uniform draws, so writing text costs no generator call per row.
    """
    c, s = CATEGORIES[cat], STYLES[style]
    material, size = _pick(c.materials, u[0]), _pick(c.sizes, u[1])
    colour_word = _pick(COLOUR_WORDS[colour], u[2])
    i = int(u[6] * len(c.features))
    j = (i + 1 + int(u[7] * (len(c.features) - 1))) % len(c.features)
    if retail:  # feed copy: "Zara black flowy linen pants. Wide leg. Cuffed hem. ..."
        brand = _pick(RETAIL_BRANDS, u[3])
        fabric = f" {material}" if u[5] < 0.5 else ""
        title = f"{brand} {colour_word} {_pick(s.adjectives, u[4])}{fabric} {c.name}"
        made = f"Made of {material}." if u[9] < 0.5 else f"{material.capitalize()} blend."
        description = f"{c.features[i]}. {c.features[j]}. {_pick(s.lines, u[8])}. {made}"
        return title, description, brand, material, size
    # Resale: the seller's words; the style shows mostly in the brand and the trailing tags.
    brand = _pick(s.brands, u[3]) if u[4] < 0.7 else _pick(GENERAL_BRANDS, u[3])
    alias, pattern = _pick(c.aliases, u[5]), int(u[8] * 4)
    if pattern == 0:
        vintage = "Vintage " if s.name == "vintage" else ""
        title = f"{vintage}{brand} {alias.title()}  {_pick(_SIZE_PHRASES, u[9]).format(size)}"
    elif pattern == 1:
        title = f"{brand} {alias} - size {size} - {CONDITIONS[condition]}"
    elif pattern == 2:
        title = f"{colour_word.capitalize()} {alias} w/ {c.features[i].lower()}"
    else:
        title = f"{brand} {colour_word} {material} {alias}"
    parts = [
        _pick(_CONDITION_LINES[condition], u[10]),
        _pick(_FIT_LINES, u[11]).format(size),
        f"{colour_word.capitalize()} {material}. {_pick(s.seller, u[12])}.",
    ]
    if u[13] < 0.5:
        parts.append(_pick(_CHATTER, u[13] * 2))
    tags = [re.sub(r"\W", "", brand.lower()), *s.tags[int(u[14] * 3) :][:2], alias.lower()]
    description = " ".join(parts) + "  " + " ".join(tags)
    if u[15] < 0.2:
        emoji = " " + _pick(_EMOJI, u[15] * 5)
        title, description = (
            (title + emoji, description) if u[15] < 0.08 else (title, description + emoji)
        )
    return title, description, brand, material, size


def _draw_catalog(
    rng: np.random.Generator, n: int
) -> tuple[dict[str, list], dict[str, np.ndarray]]:
    """Clean catalog columns (lists, in `SCHEMA` order) and each row's attribute codes."""
    codes = {
        "category": rng.choice(len(CATEGORIES), n, p=_normalized([c.weight for c in CATEGORIES])),
        "style": rng.choice(len(STYLES), n, p=_normalized([s.weight for s in STYLES])),
        "colour": rng.choice(len(COLOURS), n, p=_normalized([w for w, _ in _COLOURS.values()])),
    }
    retail = rng.random(n) < 0.3  # feed rows are always new with tags
    condition = np.where(retail, 0, rng.choice(len(CONDITIONS), n, p=_CONDITION_P))
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
    premium = np.array([b in _PREMIUM for b in brand])
    price = np.array([c.price for c in CATEGORIES])[codes["category"]] * np.where(premium, 2.2, 1)
    price = price * _CONDITION_PRICE[condition] * np.exp(noise)
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


# ---------------------------------------------------------------------------- dirt


def _add_dirt(rng: np.random.Generator, columns: dict, codes: dict) -> np.ndarray:
    """Mix `DIRTY_RATES`' kinds into the catalog in place; return each row's kind (-1 = clean).

    Duplicates sit in the second half and copy the id of an earlier clean row, so the row that
    "first occurrence wins" keeps is the intact original.
    """
    n = len(columns["listing_id"])
    kinds = list(DIRTY_RATES)
    labels = np.repeat(np.arange(len(kinds)), [max(1, round(r * n)) for r in DIRTY_RATES.values()])
    is_dup = np.array([k.startswith("duplicate_id") for k in kinds])[labels]
    dup_rows = rng.choice(np.arange(n // 2, n), int(is_dup.sum()), replace=False)
    free = np.setdiff1d(np.arange(n), dup_rows)
    dirty = np.full(n, -1)
    dirty[dup_rows] = labels[is_dup]
    dirty[rng.choice(free, int((~is_dup).sum()), replace=False)] = labels[~is_dup]
    clean = dirty < 0
    for row in np.flatnonzero(~clean).tolist():
        _dirty_row(rng, kinds[dirty[row]], columns, codes, row, clean)
    return dirty


def _dirty_row(rng, kind: str, columns: dict, codes: dict, row: int, clean: np.ndarray) -> None:
    title, description = columns["title"][row], columns["description"][row]
    if kind == "missing_id":
        columns["listing_id"][row] = None
    elif kind.startswith("duplicate_id"):
        earlier = np.flatnonzero(clean[:row])
        source = int(earlier[rng.integers(len(earlier))])
        if kind == "duplicate_id_same_text":  # the same listing posted twice
            for values in [*columns.values(), *codes.values()]:
                values[row] = values[source]
        columns["listing_id"][row] = columns["listing_id"][source]
    elif kind == "blank_text":
        columns["title"][row], columns["description"][row] = _pick(_BLANKS, rng.random())
    elif kind == "html":  # a product feed that ships markup: "<p>Soft <b>wool</b> &amp; ...</p>"
        body = html.escape(description, quote=False)
        material = columns["material"][row]
        sentences = body.replace(material, f"<b>{material}</b>", 1).split(". ")
        items = "".join(f"<li>{s}</li>" for s in sentences[1:])
        care = "<p>Soft &amp; easy care &ndash; machine wash cold.</p>"
        columns["description"][row] = f"<p>{sentences[0]}</p><ul>{items}</ul>{care}"
    elif kind == "mojibake":
        if description.isascii():  # mojibake needs something beyond ASCII to garble
            description = description.replace("'", "\u2019") + " " + _pick(_EMOJI, rng.random())
        columns["description"][row] = mojibake(description)
        if rng.random() < 0.5:
            columns["title"][row] = mojibake(title)
    elif kind == "control_chars":  # pasted from a PDF or a terminal
        char = _pick(_CONTROL_CHARS, rng.random())
        at_title, at_description = rng.integers(len(title)), rng.integers(len(description))
        columns["title"][row] = title[:at_title] + char + title[at_title:]
        columns["description"][row] = (
            description[:at_description] + char + description[at_description:]
        )
    elif kind == "null_description":
        columns["description"][row] = None


# ---------------------------------------------------------------------------- queries


@dataclass
class _Combo:
    """One query's attributes and the rows that carry them."""

    kind: tuple[str, ...]
    values: tuple[int, ...]
    held_out: bool
    clean: np.ndarray  # clean rows: triplet positives
    relevant: np.ndarray  # every row the embed job keeps: query ground truth

    def phrasings(self) -> list[str]:
        """Every way a shopper might ask for this combination."""
        a = dict(zip(self.kind, self.values, strict=True))
        c = CATEGORIES[a["category"]]
        s = STYLES[a["style"]] if "style" in a else None
        colour = COLOURS[a["colour"]] if "colour" in a else ""
        if self.kind == ("category", "style"):
            return (
                [f"{q} {c.name}" for q in s.query]
                + [f"{q.capitalize()} {c.plural} {s.occasions[0]}" for q in s.query[:1]]
                + [f"{c.plural} {o}" for o in s.occasions]
                + [s.mood.format(c.unit)]
            )
        if self.kind == ("category", "colour"):
            return [f"{colour} {c.name}", f"{colour} {c.name} in great condition"] + [
                f"Looking for {colour} {c.plural}"
            ]
        if self.kind == ("category", "material"):
            m = MATERIALS[a["material"]]
            return [f"{m} {c.name}", f"{c.name} made of {m}", f"Real {m} {c.plural}"]
        return [f"{q} {colour} {c.name}" for q in s.query[:2]] + [
            f"{colour} {c.plural} {s.occasions[0]}"
        ]


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


def _combos(rng, codes: dict, clean_rows: np.ndarray, kept_rows: np.ndarray) -> list[_Combo]:
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
            combos.append(_Combo(kind, values, held_out, clean.get(k, _EMPTY), rows))
    return combos


def _round_robin(rng, groups: list[list[_Combo]]) -> list[_Combo]:
    """Shuffle each kind's combos and interleave them, so every kind gets its share."""
    shuffled = [[g[i] for i in rng.permutation(len(g))] for g in groups]
    longest = max((len(g) for g in shuffled), default=0)
    return [g[i] for i in range(longest) for g in shuffled if i < len(g)]


def _queries(rng, combos: list[_Combo], ids: list, count: int) -> list[dict]:
    """Held-out queries with 3..200 relevant listings (fewer for small catalogs)."""
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
    for combo in picked:
        phrasings = combo.phrasings()
        query = phrasings[rng.integers(len(phrasings))]
        if query in seen:
            continue
        seen.add(query)
        relevant = sorted(ids[r] for r in combo.relevant.tolist())
        queries.append(
            {"query_id": f"q{len(queries) + 1:04d}", "query": query, "relevant_ids": relevant}
        )
        if len(queries) == count:
            break
    return queries


# ---------------------------------------------------------------------------- triplets


def _negative(rng, combo: _Combo, codes: dict, clean_rows: np.ndarray, by_attr: dict) -> int:
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


def _triplets(rng, combos: list[_Combo], count: int, texts, codes, clean_rows) -> list[tuple]:
    """`count` (anchor, positive, negative) rows; kinds equally likely, then combos."""
    groups = [[c for c in combos if c.kind == kind and len(c.clean)] for kind in KINDS]
    groups = [g for g in groups if g]
    by_attr = {a: _groups(codes[a], clean_rows) for a in _ATTR_SIZES}
    rows = []
    for _ in range(count if groups else 0):
        group = groups[rng.integers(len(groups))]
        combo = group[rng.integers(len(group))]
        phrasings = combo.phrasings()
        anchor = phrasings[rng.integers(len(phrasings))]
        positive = int(combo.clean[rng.integers(len(combo.clean))])
        negative = _negative(rng, combo, codes, clean_rows, by_attr)
        rows.append((anchor, texts(positive), texts(negative)))
    return rows


def _write_triplets(rows: list[tuple], path: Path) -> None:
    columns = list(zip(*rows, strict=True)) if rows else [[], [], []]
    table = pa.table(dict(zip(TRIPLET_SCHEMA.names, columns, strict=True)), schema=TRIPLET_SCHEMA)
    pq.write_table(table, path)


# ---------------------------------------------------------------------------- run


def _write_catalog(table: pa.Table, directory: Path, files: int) -> list[str]:
    """Split `table` evenly into `files` part files; drop part files a bigger earlier run left."""
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


def run(config: SampleDataConfig) -> dict:
    """Write the catalog, the triplets and the held-out queries; return a summary.

    Sizes scale with the catalog: for 20,000 listings about 2,000 train and 300 eval triplets
    and 200 queries; never fewer than 40, 10 and 10 (as far as a small catalog allows queries).
    """
    n = config.listings
    out = Path(config.output).expanduser()
    rng = np.random.default_rng(config.seed)
    columns, codes = _draw_catalog(rng, n)
    dirty = _add_dirt(rng, columns, codes)
    catalog = _write_catalog(pa.table(columns, schema=SCHEMA), out / "catalog", config.files)

    kinds = list(DIRTY_RATES)
    clean_rows = np.flatnonzero(dirty < 0)
    dropped = np.isin(dirty, [kinds.index(k) for k in UNEMBEDDABLE])
    combos = _combos(rng, codes, clean_rows, np.flatnonzero(~dropped))
    queries = _queries(rng, combos, columns["listing_id"], min(200, max(10, n // 100)))

    def texts(row: int) -> str:
        return listing_text(columns["title"][row], columns["description"][row])

    held = [c for c in combos if c.held_out]
    evals = _triplets(rng, held, min(300, max(10, n * 3 // 200)), texts, codes, clean_rows)
    train = [c for c in combos if not c.held_out]
    train = _triplets(rng, train, min(2000, max(40, n // 10)), texts, codes, clean_rows)
    held_strings = {q["query"] for q in queries} | {t[0] for t in evals}  # membership only
    train = [t for t in train if t[0] not in held_strings]

    (out / "triplets").mkdir(parents=True, exist_ok=True)
    _write_triplets(train, out / "triplets" / "train.parquet")
    _write_triplets(evals, out / "triplets" / "eval.parquet")
    lines = [json.dumps(q, ensure_ascii=False) + "\n" for q in queries]
    (out / "queries.jsonl").write_text("".join(lines), encoding="utf-8")
    return {
        "output": str(out),
        "listings": n,
        "catalog_files": catalog,
        "dirty_rows": {k: int((dirty == i).sum()) for i, k in enumerate(kinds)},
        "train_triplets": len(train),
        "eval_triplets": len(evals),
        "queries": len(queries),
        "triplets": [
            str(out / "triplets" / "train.parquet"),
            str(out / "triplets" / "eval.parquet"),
        ],
        "queries_path": str(out / "queries.jsonl"),
    }
