"""Query styles: the ways shoppers word the same request, and which of them training may see.

A held-out query that differs from the training anchors only in its attribute combination
measures whether the model memorised the template, not whether it understands shoppers. So every
query is written in one of `STYLES`, and whole styles (`EVAL_ONLY_STYLES`) never appear among the
training anchors: misspellings, colour synonyms the catalog rarely or never uses ("oyster",
"oatmeal", "midnight blue"), and size/fit phrasing. All styles are brand-less, like most shopper
queries: the brand is in the listing, not in the request.

Every writer takes the combination's attributes and a uniform draw `u` in [0, 1) and returns one
query; the draw picks among its phrasings, so the generator's sequence does not depend on which
style a query has.
"""

from __future__ import annotations

from fashion_batch.sample_data.vocabulary import CATEGORIES, COLOURS, MATERIALS, STYLES, pick

TRAIN_STYLES = ("attributes", "shopper")
EVAL_ONLY_STYLES = ("misspelled", "synonym", "fit")
QUERY_STYLES = TRAIN_STYLES + EVAL_ONLY_STYLES

# What shoppers call a colour, beside the catalog's own words (vocabulary.COLOUR_WORDS): some
# appear in listings ("off-white", "charcoal"), most never do.
COLOUR_SYNONYMS = {
    "black": ("onyx", "jet", "midnight black"),
    "white": ("snow white", "chalk", "pure white"),
    "navy": ("midnight blue", "dark blue", "marine"),
    "grey": ("charcoal", "slate", "ash grey"),
    "beige": ("oatmeal", "taupe", "nude"),
    "brown": ("chocolate", "mocha", "coffee"),
    "olive": ("khaki", "sage green", "military green"),
    "red": ("crimson", "brick red", "tomato red"),
    "pink": ("rose", "dusty pink", "salmon"),
    "blue": ("cornflower blue", "powder blue", "denim blue"),
    "green": ("emerald green", "bottle green", "kelly green"),
    "cream": ("oyster", "off-white", "eggshell", "ecru"),
    "burgundy": ("oxblood", "plum", "wine red"),
    "camel": ("cognac", "tan", "toffee"),
}
_FIT = ("{colour} {name} size {size}", "{colour} {plural} in a size {size}")
_FIT += ("{colour} {name}, {size}, fits true to size", "need {colour} {plural} that come in {size}")


def styles_for(kind: tuple[str, ...]) -> tuple[str, ...]:
    """The styles a query of this attribute kind can be written in: synonyms need a colour, and
    size/fit phrasing is for colour + category (its relevant rows are also filtered by size)."""
    styles = [*TRAIN_STYLES, "misspelled"]
    if "colour" in kind:
        styles.append("synonym")
    if kind == ("category", "colour"):
        styles.append("fit")
    return tuple(styles)


def write(style: str, kind: tuple[str, ...], values: tuple[int, ...], u: float, size: str = ""):
    """One query for the combination (`kind`, `values`) in `style`; `size` only for `fit`."""
    a = dict(zip(kind, values, strict=True))
    c = CATEGORIES[a["category"]]
    if style == "misspelled":
        return misspell(write("attributes", kind, values, u), c.name, u)
    colour = COLOURS[a["colour"]] if "colour" in a else ""
    if style == "synonym":
        colour = pick(COLOUR_SYNONYMS[colour], u)
    if style == "fit":
        return pick(_FIT, u).format(colour=colour, name=c.name, plural=c.plural, size=size)
    s = STYLES[a["style"]] if "style" in a else None
    m = MATERIALS[a["material"]] if "material" in a else ""
    if style == "synonym":  # a synonym in either wording
        both = _phrasings("attributes", kind, c, s, colour, m)
        return pick(both + _phrasings("shopper", kind, c, s, colour, m), u)
    return pick(_phrasings(style, kind, c, s, colour, m), u)


def _phrasings(style: str, kind, c, s, colour: str, m: str) -> list[str]:
    if kind == ("category", "style"):
        if style == "attributes":
            return [f"{q} {c.name}" for q in s.query]
        return (
            [f"{s.query[0].capitalize()} {c.plural} {s.occasions[0]}"]
            + [f"{c.plural} {o}" for o in s.occasions]
            + [s.mood.format(c.unit)]
        )
    if kind == ("category", "colour"):
        if style == "attributes":
            return [f"{colour} {c.name}"]
        return [f"{colour} {c.name} in great condition", f"Looking for {colour} {c.plural}"]
    if kind == ("category", "material"):
        if style == "attributes":
            return [f"{m} {c.name}"]
        return [f"{c.name} made of {m}", f"Real {m} {c.plural}"]
    if style == "attributes":
        return [f"{q} {colour} {c.name}" for q in s.query[:2]]
    return [f"{colour} {c.plural} {s.occasions[0]}"]


def misspell(query: str, keep: str, u: float) -> str:
    """`query` with one typo in each word of 3+ letters other than `keep` (the category name, so
    the query still says what is wanted): two neighbouring letters swapped, or one dropped, as
    fast thumbs do. Words with digits or hyphens ("90s", "heavy-duty") get one only when no
    plain word can; every attribute word in the vocabulary has 3+ characters, so the result
    always differs from `query`. Deterministic in `u`."""
    words = query.split(" ")
    eligible = [i for i, w in enumerate(words) if len(w) >= 3 and w.isalpha() and w != keep]
    if not eligible:
        eligible = [i for i, w in enumerate(words) if len(w) >= 3 and w != keep]
    for i in eligible:
        word = words[i]
        at = 1 + int(((u * 7919 + i * 104729) % 1) * (len(word) - 2))  # never the first letter
        swapped = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
        dropped = word[:at] + word[at + 1 :]
        words[i] = swapped if (int(u * 1000) + i) % 2 and swapped != word else dropped
    return " ".join(words)
