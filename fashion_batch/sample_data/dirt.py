"""The dirt real marketplace feeds carry, mixed into a clean catalog.

Every kind in `DIRTY_RATES` exercises one cleaning or quarantine path of the embed job: rows it
must quarantine (no id, no text, a repeated id), rows it must clean (HTML, mojibake, control
characters) and rows it must still embed (no description). Dirt is injected after the clean
catalog is drawn, so the rows it leaves alone stay the ground truth that triplet positives are
taken from.
"""

from __future__ import annotations

import html

import numpy as np

from fashion_batch.sample_data.vocabulary import EMOJI, pick

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
_BLANKS = ((None, None), ("   ", None), (None, " \n\t "), ("\u00a0", "  "), ("", ""))
_CONTROL_CHARS = ("\x00", "\x07", "\x1b", "\x7f")
_CP1252 = [bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(256)]


def mojibake(text: str) -> str:
    """UTF-8 bytes read as Windows-1252 ("💕" → "ðŸ’•"), as a CSV through the wrong codec does.

    Bytes cp1252 leaves undefined keep their code point (ftfy's "sloppy-windows-1252"), so
    `ftfy.fix_text` can always undo it.
    """
    return "".join(_CP1252[b] for b in text.encode("utf-8"))


def add_dirt(rng: np.random.Generator, columns: dict, codes: dict) -> np.ndarray:
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
    """Turn `row` into a row of dirt `kind`, in place."""
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
        columns["title"][row], columns["description"][row] = pick(_BLANKS, rng.random())
    elif kind == "html":  # a product feed that ships markup: "<p>Soft <b>wool</b> &amp; ...</p>"
        body = html.escape(description, quote=False)
        material = columns["material"][row]
        sentences = body.replace(material, f"<b>{material}</b>", 1).split(". ")
        items = "".join(f"<li>{s}</li>" for s in sentences[1:])
        care = "<p>Soft &amp; easy care &ndash; machine wash cold.</p>"
        columns["description"][row] = f"<p>{sentences[0]}</p><ul>{items}</ul>{care}"
    elif kind == "mojibake":
        if description.isascii():  # mojibake needs something beyond ASCII to garble
            description = description.replace("'", "\u2019") + " " + pick(EMOJI, rng.random())
        columns["description"][row] = mojibake(description)
        if rng.random() < 0.5:
            columns["title"][row] = mojibake(title)
    elif kind == "control_chars":  # pasted from a PDF or a terminal
        char = pick(_CONTROL_CHARS, rng.random())
        at_title, at_description = rng.integers(len(title)), rng.integers(len(description))
        columns["title"][row] = title[:at_title] + char + title[at_title:]
        columns["description"][row] = (
            description[:at_description] + char + description[at_description:]
        )
    elif kind == "null_description":
        columns["description"][row] = None
