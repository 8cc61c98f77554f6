"""Listing text: template rendering, cleaning and the per-row content hash.

Marketplace text is whatever sellers and retailer feeds typed: HTML from a product feed, mojibake
from a CSV that went through the wrong codec, control characters pasted from a PDF, runs of
spaces. The encoder should see the text a shopper would read, so every field is cleaned before it
is put into the template, and the template drops the separators around fields that are empty (a
listing without a title must not embed as ". Blue jeans").

Cleaning is linear in the text's length (a stray "<" in a pasted page must not cost seconds), and
each field is cleaned once: the template's literals are cleaned when it is built, so the joined
text needs no second pass (which would unescape twice and strip an escaped tag written as text).
Unit-testable without Ray or a model; `text_columns` and `check_template` are its Arrow ends.
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
import pyarrow as pa

from fashion_batch.errors import InputError

_TAG = re.compile(r"<[^>]*>")
# A decimal character reference long enough that html.unescape's int() refuses it (Python limits
# int() of a decimal string to 4300 digits): a crash in a worker, not a cleaning rule.
_LONG_DECIMAL_REF = re.compile(r"&#([0-9]{16,});?")
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
    return _clean(value if isinstance(value, str) else str(value)).strip()


def _clean(text: str) -> str:
    """clean_text without the final strip (what a template's literal text gets)."""
    if not text.isascii():  # mojibake needs non-ASCII; skipping ftfy saves most of its cost
        text = ftfy.fix_text(text, unescape_html=False)
    text = _strip_tags(text)
    if "&#" in text:
        text = _LONG_DECIMAL_REF.sub(_short_decimal_ref, text)
    text = html.unescape(text)
    text = _CONTROL.sub("", text)
    return _SPACE.sub(" ", text)


def _strip_tags(text: str) -> str:
    """`_TAG.sub(" ", text)` in linear time.

    No tag can start after the last ">", and `re` would rescan from every "<" there to the end
    of the text (quadratic on a run of "<"). Before it, every "<" finds its ">" and the next
    search starts after it, so each character is looked at a bounded number of times.
    """
    end = text.rfind(">") + 1
    if not end:
        return text
    return _TAG.sub(" ", text[:end]) + text[end:]


def _short_decimal_ref(match: re.Match) -> str:
    """The same character html.unescape gives the reference, without int() of a long string."""
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > 8:  # above U+10FFFF
        return "\ufffd"
    return f"&#{digits};"


def content_hash(text: str) -> str:
    """A short stable digest of the cleaned text (used to detect changed listings)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class _Field:
    name: str
    spec: str
    prefix: str  # the literal text between the previous field (or the start) and this one


class RenderError(ValueError):
    """A value that its field's format spec cannot format, e.g. 2**40 for "{code:c}"."""

    def __init__(self, field: str, spec: str, value: Any, error: Exception):
        self.field, self.spec, self.value = field, spec, value
        super().__init__(f"field {{{field}:{spec}}} cannot format {value!r}: {error}")


class Template:
    """A `str.format` style template over listing columns, e.g. "{title}. {description}".

    Rendering rules (design.md, Input): a null field renders empty, and a literal separator is
    only emitted between two non-empty fields (the one in front of the later field is used). The
    literal before the first field goes with the first field, the one after the last field with
    the last field: "[{brand}] {title}" renders "Jeans" when brand is null, not "[Jeans".

    Args:
        template: the template; fields name columns and may carry a format spec ("{price:.2f}").
        flag: the option that gave it, for messages (`--text-template`, `--fix-template`).
    """

    def __init__(self, template: str, flag: str = "--text-template"):
        fields: list[_Field] = []
        literal_before = ""
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise ValueError(f"invalid {flag} {template!r}: {e}") from e
        suffix = ""
        for literal, name, spec, conversion in parsed:
            if name is None:
                suffix = literal
                continue
            if not name or name.isdigit() or any(c in name for c in ".[]"):
                raise ValueError(f"invalid {flag} {template!r}: field {name!r}")
            if conversion:
                raise ValueError(f"invalid {flag} {template!r}: no !conversions")
            fields.append(_Field(name, spec or "", literal_before + literal))
            literal_before = ""
        if not fields:
            raise ValueError(f"{flag} {template!r} names no column, e.g. '{{title}}'")
        self.template = template
        self.flag = flag
        self._fields = fields
        self._suffix = suffix
        # Literals are cleaned here, once, so a rendered row needs no second cleaning pass.
        self._clean_prefixes = [_clean(f.prefix) for f in fields]
        self._clean_suffix = _clean(suffix)

    @property
    def columns(self) -> list[str]:
        """Column names the template needs, in order of first use, without repeats."""
        return list(dict.fromkeys(f.name for f in self._fields))

    def _format(self, field: _Field, value: Any, strict: bool = True) -> str:
        """The field's text. Bytes are decoded (undecodable ones shown as U+FFFD: text_columns
        finds those rows); a format spec applies to non-text values. A value its spec cannot
        format raises RenderError, or with `strict=False` is shown as str(value)."""
        if value is None:
            return ""
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode("utf-8", errors="replace")
        if isinstance(value, str):
            return value
        if not field.spec:
            return str(value)
        try:
            return format(value, field.spec)
        except (ValueError, TypeError, OverflowError) as e:
            if not strict:
                return str(value)
            raise RenderError(field.name, field.spec, value, e) from e

    def render(self, row: dict[str, Any], clean: bool = True) -> str:
        """Render one row. With `clean`, each field is cleaned (once) and joined with the
        template's cleaned literals; a value its format spec cannot format raises RenderError.
        Without, the raw text for a person to read (the quarantine's): never raises."""
        parts: list[str] = []
        value = ""
        for i, field in enumerate(self._fields):
            value = self._format(field, row.get(field.name), strict=clean)
            if clean:
                value = clean_text(value)
            if value:
                # The first field's leading literal belongs to it ("[{brand}] ..."); any other
                # literal is a separator, emitted only after something non-empty.
                prefix = self._clean_prefixes[i] if clean else field.prefix
                parts.append(prefix + value if parts or i == 0 else value)
        if not parts:
            return ""
        if value:  # the trailing literal belongs to the last field
            parts.append(self._clean_suffix if clean else self._suffix)
        text = "".join(parts)
        # Fields are stripped and literals collapsed, so only the ends can hold whitespace.
        return text.strip() if clean else text

    def render_columns(
        self, columns: dict[str, Sequence[Any]], n: int, clean: bool = True
    ) -> list[str]:
        """Render `n` rows given as column lists (the shape `pa.Table.to_pydict()` returns)."""
        names = self.columns
        return [self.render({c: columns[c][i] for c in names}, clean=clean) for i in range(n)]

    def render_rows(
        self, columns: dict[str, Sequence[Any]], n: int
    ) -> tuple[list[str], list[bool]]:
        """render_columns that flags a row whose value its format spec cannot format (text "")
        instead of raising: (texts, failed)."""
        names = self.columns
        texts, failed = [""] * n, [False] * n
        for i in range(n):
            try:
                texts[i] = self.render({c: columns[c][i] for c in names})
            except RenderError:
                failed[i] = True
        return texts, failed


# ------------------------------------------------------------------- Arrow and Parquet ends

_AS_BYTES = {
    pa.string(): pa.binary(),
    pa.large_string(): pa.large_binary(),
    pa.string_view(): pa.binary_view(),
}
_BINARY = (pa.binary(), pa.large_binary(), pa.binary_view())


def text_columns(table: pa.Table, names: list[str]) -> tuple[dict[str, list], list[bool]]:
    """The Python values of the columns `names`, and which rows hold bytes that are not UTF-8.

    Binary columns are decoded (a template renders text, not "b'...'"). A string column that
    fails Arrow's full validation is read as bytes: Parquet from other tools can hold invalid
    UTF-8 there, which pyarrow reads but cannot convert. Bad bytes come back as U+FFFD.
    """
    invalid = [False] * len(table)
    out: dict[str, list] = {}
    for name in names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if col.type in _AS_BYTES:
            try:
                col.validate(full=True)
            except pa.ArrowInvalid:
                col = col.cast(_AS_BYTES[col.type])
        values = out[name] = col.to_pylist()
        if col.type not in _BINARY and not pa.types.is_fixed_size_binary(col.type):
            continue
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                values[i] = v.decode("utf-8")
            except UnicodeDecodeError:
                values[i] = v.decode("utf-8", errors="replace")
                invalid[i] = True
    return out, invalid


def check_template(template: Template, fs, paths: list[str]) -> None:
    """Refuse, before any work starts, a template that the input cannot fill.

    For each file, its first row is rendered, then each field's format spec is tried on a value
    of its column's Arrow type ("{price:d}" on a float column fails whatever the values, even
    when the first row is null). Raises InputError naming the file, the field and the value. A
    null renders empty and is never an error; a later row whose value breaks its format spec
    ("{code:c}" on 2**40) is quarantined as template_error by the stage instead.
    """
    import pyarrow.parquet as pq

    for path in paths:
        try:
            with fs.open_input_file(path) as f:
                # Without pre-buffering, one row costs its first pages, not its row group.
                pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 16)
                schema = pf.schema_arrow
                first = next(pf.iter_batches(batch_size=1, columns=template.columns), None)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file: {e}") from e
        try:
            if first is not None and first.num_rows:
                columns, _ = text_columns(pa.Table.from_batches([first]), template.columns)
                template.render({c: values[0] for c, values in columns.items()})
        except RenderError as e:
            raise InputError(f"{path}: first row: {template.flag} {e}") from e
        try:
            template.render({c: _value_of_type(schema.field(c).type) for c in template.columns})
        except RenderError as e:
            raise InputError(
                f"{path}: column {e.field!r} is {schema.field(e.field).type}: {template.flag} "
                f"field {{{e.field}:{e.spec}}} cannot format its values: {e.__cause__}"
            ) from e


def _value_of_type(type_: pa.DataType) -> Any:
    """A Python value of an Arrow type (zero, the epoch), or None where there is no such value."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    for zero in (pa.array([0], pa.int64()), pa.array([0], pa.int32()), pa.array(["0"])):
        try:  # int32 reaches date32 and time32, a string any decimal's precision
            return zero.cast(type_, safe=False)[0].as_py()
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            continue
    return None
