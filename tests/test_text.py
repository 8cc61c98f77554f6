import pytest

from fashion_batch.text import Template, clean_text, content_hash


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
