"""The template meets real data (docs/guarantees.md, "Text"): bytes render as text, bytes that are
not UTF-8 are quarantined as invalid_utf8 (in binary and in string columns), a template the data
cannot fill is refused on the driver before anything is written, and a later row that breaks a
format spec is quarantined as template_error. None of these is an exception in a worker."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.plan import make_plan
from fashion_batch.embed.stages import RAW, REASON, TEXT, PrepareText
from fashion_batch.errors import InputError
from tests.helpers import run_stages

NOT_UTF8 = b"Caf\xe9 cr\xe8me"  # Latin-1 bytes: not valid UTF-8
REPLACED = "Caf\ufffd cr\ufffdme"


def _write(d: Path, name: str, columns: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), d / name)
    return d


def _outputs(out: Path) -> tuple[pa.Table, pa.Table]:
    got = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))
    q = [pq.read_table(p) for p in sorted((out / "quarantine").glob("part-*.parquet"))]
    return got, pa.concat_tables(q) if q else pa.table({"listing_id": [], "reason": []})


def _not_utf8_strings(values: list[bytes | None], type_: pa.DataType) -> pa.Array:
    """A string array holding bytes that are not UTF-8, as other Parquet writers produce them."""
    binary = pa.large_binary() if type_ == pa.large_string() else pa.binary()
    return pa.array(values, binary).cast(type_, safe=False)


# ------------------------------------------------------------------- bytes and invalid UTF-8


@pytest.mark.parametrize("type_", [pa.binary(), pa.large_binary(), pa.binary_view()])
def test_binary_columns_render_as_text_and_bad_bytes_are_quarantined(type_):
    batch = pa.table(
        {
            "listing_id": [1, 2, 3],
            "title": pa.array(["Café top".encode(), NOT_UTF8, None], type_),
            "description": ["cotton", "wool", "linen"],
        }
    )
    out = PrepareText("{title}. {description}", "listing_id")(batch)
    assert out.column(TEXT).to_pylist()[0] == "Café top. cotton"  # not "b'Caf\\xc3\\xa9 top'"
    assert out.column(REASON).to_pylist() == [None, "invalid_utf8", None]
    assert out.column(RAW).to_pylist()[1] == f"{REPLACED}. wool"
    assert out.column(TEXT).to_pylist()[2] == "linen"


@pytest.mark.parametrize("type_", [pa.string(), pa.large_string()])
def test_invalid_utf8_in_a_string_column_is_quarantined_not_raised(tmp_path, type_):
    titles = _not_utf8_strings([b"Blue jeans", NOT_UTF8, b"Red coat"], type_)
    d = _write(tmp_path / "in", "part-0.parquet", {"listing_id": [1, 2, 3], "title": titles})
    assert pq.read_table(d / "part-0.parquet").schema.field("title").type == type_
    run_stages(d, tmp_path / "out", rows_per_unit=10, template="{title}")
    got, q = _outputs(tmp_path / "out")
    assert got.column("listing_id").to_pylist() == [1, 3]
    assert q.column("listing_id").to_pylist() == [2]
    assert q.column("reason").to_pylist() == ["invalid_utf8"]
    assert q.column("text").to_pylist() == [REPLACED]


def test_invalid_utf8_in_a_dictionary_string_column_is_quarantined():
    words = _not_utf8_strings([b"Blue jeans", NOT_UTF8], pa.string())
    titles = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), words)
    batch = pa.table({"listing_id": [1, 2, 3], "title": titles})
    out = PrepareText("{title}", "listing_id")(batch)
    assert out.column(REASON).to_pylist() == [None, "invalid_utf8", None]
    assert out.column(TEXT).to_pylist()[::2] == ["Blue jeans", "Blue jeans"]


def test_a_first_row_that_is_not_utf8_does_not_stop_the_driver_check(tmp_path):
    titles = _not_utf8_strings([NOT_UTF8, b"Red coat"], pa.string())
    d = _write(tmp_path / "in", "part-0.parquet", {"listing_id": [1, 2], "title": titles})
    config = EmbedConfig(input=str(d), output=str(tmp_path / "out"), text_template="{title}")
    assert make_plan(config).rows_in == 2


# ------------------------------------------------------------------------- template errors


def _priced(d: Path, name: str, prices: pa.Array, codes: list[int] | None = None) -> Path:
    n = len(prices)
    columns = {"listing_id": list(range(n)), "title": [f"Top {i}" for i in range(n)]}
    columns["price"] = prices
    if codes is not None:
        columns["code"] = pa.array(codes, pa.int64())
    return _write(d, name, columns)


def _config(d: Path, out: Path, template: str) -> EmbedConfig:
    return EmbedConfig(input=str(d), output=str(out), text_template=template)


@pytest.mark.parametrize(
    "prices, template, names",
    [
        (pa.array([12.5, 3.0]), "{title} {price:d}", ["{price:d}", "12.5", "part-0.parquet"]),
        # a null first row proves nothing about a value: the column's type is checked as well
        (pa.array([None, None], pa.float64()), "{title} {price:d}", ["{price:d}", "double"]),
        (pa.array([1.0, 2.0]), "{title} {price:%Y}", ["{price:%Y}", "part-0.parquet"]),
        (pa.array([None], pa.decimal128(10, 2)), "{price:d}", ["{price:d}", "decimal128(10, 2)"]),
    ],
)
def test_a_template_the_data_cannot_fill_is_refused(tmp_path, prices, template, names):
    d = _priced(tmp_path / "in", "part-0.parquet", prices)
    with pytest.raises(InputError) as e:
        make_plan(_config(d, tmp_path / "out", template))
    for name in names:
        assert name in str(e.value)


def test_the_first_row_of_every_file_is_checked(tmp_path):
    d = _priced(tmp_path / "in", "part-0.parquet", pa.array([1.0]), codes=[65])
    _priced(d, "part-1.parquet", pa.array([2.0]), codes=[2**40])
    with pytest.raises(InputError) as e:
        make_plan(_config(d, tmp_path / "out", "{title} #{code:c}"))
    assert "part-1.parquet" in str(e.value) and str(2**40) in str(e.value)
    assert "{code:c}" in str(e.value)


def test_the_cli_refuses_a_bad_template_before_ray_or_any_write(tmp_path, monkeypatch, capsys):
    from fashion_batch.embed import job

    def no_ray():
        raise AssertionError("Ray started: the template was not checked on the driver")

    monkeypatch.setattr(job, "init_ray", no_ray)
    d = _priced(tmp_path / "in", "part-0.parquet", pa.array([12.5]))
    out = tmp_path / "out"
    args = ["embed", "--input", str(d), "--output", str(out), "--text-template", "{price:d}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "{price:d}" in err and "12.5" in err and "part-0.parquet" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_a_null_with_a_format_spec_renders_empty(tmp_path):
    d = _priced(tmp_path / "in", "part-0.parquet", pa.array([None, 12.5], pa.float64()))
    template = "{title} - {price:.2f} EUR"
    assert make_plan(_config(d, tmp_path / "plan-out", template)).rows_in == 2
    run_stages(d, tmp_path / "out", rows_per_unit=10, template=template)
    got, q = _outputs(tmp_path / "out")
    assert got.column("listing_id").to_pylist() == [0, 1]
    assert len(q) == 0
    out = PrepareText(template, "listing_id")(pq.read_table(d / "part-0.parquet"))
    assert out.column(TEXT).to_pylist() == ["Top 0", "Top 1 - 12.50 EUR"]


def test_a_later_row_that_breaks_the_format_is_quarantined_as_template_error(tmp_path):
    d = _priced(tmp_path / "in", "part-0.parquet", pa.array([1.0, 2.0, 3.0]), [65, 2**40, 66])
    template = "{title} #{code:c}"
    assert make_plan(_config(d, tmp_path / "plan-out", template)).rows_in == 3  # row 0 is fine
    run_stages(d, tmp_path / "out", rows_per_unit=10, template=template)
    got, q = _outputs(tmp_path / "out")
    assert got.column("listing_id").to_pylist() == [0, 2]
    assert q.column("listing_id").to_pylist() == [1]
    assert q.column("reason").to_pylist() == ["template_error"]
    # the quarantine shows the value as it is, where the format spec could not
    assert q.column("text").to_pylist() == [f"Top 1 #{2**40}"]
