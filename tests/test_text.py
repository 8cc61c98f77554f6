import pytest

from fashion_batch.text import RenderError, Template, clean_text, content_hash


@pytest.mark.parametrize(
    "raw, clean",
    [
        (None, ""),
        ("  Blue   jeans\n\tsize 32 ", "Blue jeans size 32"),
        ("<p>Soft <b>wool</b> &amp; cashmere</p>", "Soft wool & cashmere"),
        ("<p>one</p><p>two</p>", "one two"),
        ("a &lt;b&gt; tag shown as text", "a <b> tag shown as text"),
        ("bell\x07 and nul\x00 and del\x7f", "bell and nul and del"),
        ("Pink top ðŸ’•", "Pink top 💕"),
        ("Donâ€™t Let the Dream Die", "Don't Let the Dream Die"),  # ftfy also uncurls quotes
        ("family 👨‍👩‍👧 emoji keep their joiners", "family 👨‍👩‍👧 emoji keep their joiners"),
        (42, "42"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_template_drops_dangling_separators():
    t = Template("{title}. {description}")
    assert t.columns == ["title", "description"]
    assert t.render({"title": "Top", "description": "Cute"}) == "Top. Cute"
    assert t.render({"title": None, "description": "Blue jeans"}) == "Blue jeans"
    assert t.render({"title": "Top", "description": None}) == "Top"
    assert t.render({"title": " <br> ", "description": "\x00"}) == ""


def test_template_leading_and_trailing_literals_follow_their_field():
    t = Template("[{brand}] {title} - {price:.2f} EUR")
    assert t.columns == ["brand", "title", "price"]
    row = {"brand": "Zara", "title": "Top", "price": 12.5}
    assert t.render(row) == "[Zara] Top - 12.50 EUR"
    assert t.render({**row, "brand": None}) == "Top - 12.50 EUR"
    assert t.render({**row, "price": None}) == "[Zara] Top"


def test_template_raw_render_keeps_dirt():
    t = Template("{title}. {description}")
    assert t.render({"title": "<b>x</b>", "description": None}, clean=False) == "<b>x</b>"


def test_template_render_columns_matches_render():
    t = Template("{title}. {description}")
    cols = {"title": ["a", None, "c"], "description": ["d", "e", None]}
    assert t.render_columns(cols, 3) == ["a. d", "e", "c"]


@pytest.mark.parametrize("bad", ["no fields at all", "{}", "{0}", "{a.b}", "{a!r}", "{unclosed"])
def test_template_rejects_what_it_cannot_render(bad):
    with pytest.raises(ValueError):
        Template(bad)


def test_content_hash_is_stable_and_sensitive():
    assert content_hash("Top. Cute") == content_hash("Top. Cute")
    assert content_hash("Top. Cute") != content_hash("Top. Cute!")
    assert len(content_hash("")) == 32


# --------------------------------------------------- issue 14: clean once, linear, bytes, errors


def test_render_cleans_each_field_once():
    # A second pass over the joined text would strip the escaped tag a seller wrote as text, and
    # unescape "&amp;lt;" twice.
    t = Template("{title}. {description}")
    row = {"title": "a &lt;b&gt; tag", "description": "5 &amp;lt; 6"}
    assert t.render(row) == "a <b> tag. 5 &lt; 6"
    assert t.render(row) == f"{clean_text(row['title'])}. {clean_text(row['description'])}"


def test_template_literals_are_cleaned_like_fields():
    t = Template(" {title}\n\n-\t<br>{description}\x07 ")
    assert t.render({"title": "Top", "description": "Cute"}) == "Top - Cute"


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("&#" + "1" * 5000 + "; after", "\ufffd after"),  # beyond U+10FFFF, as html.unescape says
        ("&#x" + "f" * 5000 + "after", "\ufffdter"),  # the hex digits run on into "af"
        ("&#" + "0" * 5000 + "65; after", "A after"),
        ("&#X" + "0" * 5000 + "41 after", "A after"),
        ("&#65; &#x41; &#0065 &#1114112;", "A A A \ufffd"),
    ],
)
def test_clean_text_survives_huge_character_references(raw, clean):
    assert clean_text(raw) == clean


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("<" * 100_000, "<" * 100_000),  # no ">": a backtracking strip rescans the rest at each "<"
        ("<a " * 40_000 + "x", "<a " * 40_000 + "x"),
        ("x <p>" + "<" * 100_000 + "> y", "x y"),
        ("<div><p>" * 20_000 + "x" + "</p></div>" * 20_000, "x"),
    ],
)
def test_clean_text_strips_tags_in_linear_time(raw, clean, monkeypatch):
    """The tag pattern never sees text after the last ">": that is where `re` rescanned from
    every "<" to the end of the text (quadratic). A structural check, not a timing one: the
    speed is measured by benchmarks/clean_text.py."""
    import fashion_batch.text as text

    seen, tag = [], text._TAG

    class Spy:
        def sub(self, repl, s):
            seen.append(s)
            return tag.sub(repl, s)

    monkeypatch.setattr(text, "_TAG", Spy())
    assert clean_text(raw) == clean
    assert all(s.rfind(">") == len(s) - 1 for s in seen if s)


def test_render_decodes_bytes():
    t = Template("{title}. {description}")
    row = {"title": "Café".encode(), "description": b"\xff wool"}
    assert t.render(row) == "Café. \ufffd wool"


def test_a_value_its_spec_cannot_format_raises_render_error_naming_the_field():
    t = Template("{title} #{code:c}")
    with pytest.raises(RenderError) as e:
        t.render({"title": "Top", "code": 2**40})
    assert e.value.field == "code" and e.value.value == 2**40
    assert "{code:c}" in str(e.value) and str(2**40) in str(e.value)
    # The raw render (the quarantine's text) shows the value as it is.
    assert t.render({"title": "Top", "code": 2**40}, clean=False) == f"Top #{2**40}"


def test_render_rows_flags_rows_instead_of_raising():
    t = Template("{title} #{code:c}")
    texts, failed = t.render_rows({"title": ["a", "b", None], "code": [65, 2**40, None]}, 3)
    assert texts == ["a #A", "", ""]
    assert failed == [False, True, False]
