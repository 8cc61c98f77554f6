"""Listing text: template rendering, cleaning and the per-row content hash.

Marketplace text is whatever sellers and retailer feeds typed: HTML from a product feed, mojibake
from a CSV that went through the wrong codec, control characters pasted from a PDF, runs of
spaces. The encoder should see the text a shopper would read, so every field is cleaned before it
is put into the template, and the template drops the separators around fields that are empty (a
listing without a title must not embed as ". Blue jeans").

Everything here is pure Python over strings, so it is unit-testable without Ray or a model.
"""

from __future__ import annotations

import hashlib
import html
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ftfy

_TAG = re.compile(r"<[^>]*>")
# Unicode category Cc is exactly these two ranges; \t \n \r \v \f are left to _SPACE.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


def clean_text(value: Any) -> str:
    """Return the text a shopper would read; `None` becomes "".

    Order matters: ftfy first (it repairs mojibake such as "ðŸ’•" → "💕" and would be confused by
    tags), then tags are replaced by spaces (so "<p>a</p><p>b</p>" does not become "ab"), then
    entities are unescaped (after the tag strip, so an escaped "&lt;b&gt;" stays visible text).
    Control characters (Unicode category Cc) are dropped; format characters such as the zero-width
    joiner inside emoji sequences are kept. Whitespace is collapsed last.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if not text.isascii():  # mojibake needs non-ASCII; skipping ftfy saves most of its cost
        text = ftfy.fix_text(text, unescape_html=False)
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _CONTROL.sub("", text)
    return _SPACE.sub(" ", text).strip()


def content_hash(text: str) -> str:
    """A short stable digest of the cleaned text (used to detect changed listings)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class _Field:
    name: str
    spec: str
    prefix: str  # the literal text between the previous field (or the start) and this one


class Template:
    """A `str.format` style template over listing columns, e.g. "{title}. {description}".

    Rendering rules (design.md, Input): a null field renders empty, and a literal separator is
    only emitted between two non-empty fields (the one in front of the later field is used). The
    literal before the first field goes with the first field, the one after the last field with
    the last field: "[{brand}] {title}" renders "Jeans" when brand is null, not "[Jeans".

    Args:
        template: the template; fields name columns and may carry a format spec ("{price:.2f}").
    """

    def __init__(self, template: str):
        fields: list[_Field] = []
        literal_before = ""
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise ValueError(f"invalid --text-template {template!r}: {e}") from e
        suffix = ""
        for literal, name, spec, conversion in parsed:
            if name is None:
                suffix = literal
                continue
            if not name or name.isdigit() or any(c in name for c in ".[]"):
                raise ValueError(f"invalid --text-template {template!r}: field {name!r}")
            if conversion:
                raise ValueError(f"invalid --text-template {template!r}: no !conversions")
            fields.append(_Field(name, spec or "", literal_before + literal))
            literal_before = ""
        if not fields:
            raise ValueError(f"--text-template {template!r} names no column, e.g. '{{title}}'")
        self.template = template
        self._fields = fields
        self._suffix = suffix

    @property
    def columns(self) -> list[str]:
        """Column names the template needs, in order of first use, without repeats."""
        return list(dict.fromkeys(f.name for f in self._fields))

    def _format(self, field: _Field, value: Any) -> str:
        if value is None:
            return ""
        if field.spec and not isinstance(value, str):
            return format(value, field.spec)
        return value if isinstance(value, str) else str(value)

    def render(self, row: dict[str, Any], clean: bool = True) -> str:
        """Render one row. With `clean`, each field is cleaned first and the result again."""
        parts: list[str] = []
        value = ""
        for i, field in enumerate(self._fields):
            value = self._format(field, row.get(field.name))
            if clean:
                value = clean_text(value)
            if value:
                # The first field's leading literal belongs to it ("[{brand}] ..."); any other
                # literal is a separator, emitted only after something non-empty.
                parts.append(field.prefix + value if parts or i == 0 else value)
        if not parts:
            return ""
        if value:  # the trailing literal belongs to the last field
            parts.append(self._suffix)
        text = "".join(parts)
        return clean_text(text) if clean else text

    def render_columns(
        self, columns: dict[str, Sequence[Any]], n: int, clean: bool = True
    ) -> list[str]:
        """Render `n` rows given as column lists (the shape `pa.Table.to_pydict()` returns)."""
        names = self.columns
        return [self.render({c: columns[c][i] for c in names}, clean=clean) for i in range(n)]
