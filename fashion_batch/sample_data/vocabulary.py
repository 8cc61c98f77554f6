"""The words every synthetic listing, query and triplet is written from.

Categories and styles carry both sides of the vocabulary: what a retailer feed says ("Reinforced
triple stitching at stress points") and what a resale seller or a shopper says ("workcore",
"rugged workwear"). A model can only learn that the two mean the same thing if both come from one
attribute, so every table here is keyed by the attribute it describes. Tables are tuples, never
sets, so drawing from them by index is deterministic.
"""

from __future__ import annotations  # `_parse` reads field types as strings

from dataclasses import dataclass, fields

import numpy as np

# One spec string per entry keeps the vocabulary readable: fields split on ";", lists on "|".


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
COLOUR_WEIGHTS = tuple(weight for weight, _ in _COLOURS.values())
COLOUR_WORDS = tuple(tuple(words.split("|")) for _, words in _COLOURS.values())
MATERIALS = tuple(dict.fromkeys(m for c in CATEGORIES for m in c.materials))
CONDITIONS = ("new with tags", "new without tags", "like new", "excellent", "very good", "good")
CONDITIONS += ("fair",)
CONDITION_P = np.array([8, 7, 15, 25, 22, 17, 6]) / 100  # share of resale rows
CONDITION_PRICE = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.35])  # times the category price
CONDITION_LINES = (
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
PREMIUM_BRANDS = frozenset(  # membership only, never iterated
    _words(
        "Arc'teryx|Patagonia|Filson|Red Wing|Theory|Jil Sander|Ralph Lauren|Polo Ralph Lauren|"
        "Brooks Brothers|Supreme|BAPE|Palace|Reformation|Coach|Michael Kors|Dr. Martens|Lululemon|"
        "Alo Yoga"
    )
)
SIZE_PHRASES = ("Adult {}", "size {}", "sz {}", "Size {}")
FIT_LINES = ("Size {}, fits true to size.", "Tagged {} but fits a little oversized.")
FIT_LINES += ("Measurements in pictures, tagged {}.", "Size {}. No flaws.")
CHATTER = ("Bundle to save!", "No holds, no trades.", "Ships next day.", "Open to offers.")
CHATTER += ("Smoke-free, pet-free home.", "Please don't ask me my lowest!")
EMOJI = ("💕", "✨", "🔥", "🖤", "🌸", "🌿", "😍")


def pick(seq, u: float):
    """The entry of `seq` that the uniform draw `u` in [0, 1) lands on."""
    return seq[int(u * len(seq))]
