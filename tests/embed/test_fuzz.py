"""Bad input: hypothesis-generated catalogs through the job's own stages (no Ray, a fake encoder),
one nasty catalog end to end on Ray, corrupt files, and the security basics.

The invariant: every input row lands exactly once in the output or the quarantine, ids are
unique in the output, and neither holds anything but the input's id, a reason and its text."""

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashion_batch.cli import main
from fashion_batch.embed import EmbedConfig, run
from fashion_batch.embed.layout import REASONS
from fashion_batch.text import Template
from tests.helpers import TEMPLATE, run_stages

# ---------------------------------------------------------------------- generated catalogs

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
HUGE = st.builds(lambda s, k: s * k, st.text(min_size=1, max_size=3), st.integers(2000, 20000))
FIELD = st.one_of(st.none(), TEXT, HUGE, st.sampled_from(["", "   ", "<br/>", "&amp;", "\x00"]))


@st.composite
def catalogs(draw):
    """1-3 files (possibly empty) of rows (id, title, description); ids from a small pool so
    duplicates are common, nulls allowed; all-int or all-string ids."""
    string_ids = draw(st.booleans())
    # Ints include neighbours above 2**53 (one float64 value) and the int64 extremes.
    big = st.sampled_from([2**53, 2**53 + 1, 2**53 + 2, 2**63 - 1, -(2**63)])
    ints = st.one_of(st.integers(-3, 12), big)
    pool = ints if not string_ids else st.sampled_from(["a", "b", "é", "", "𝔁", "7"])
    row = st.tuples(st.one_of(st.none(), pool), FIELD, FIELD)
    files = draw(st.lists(st.lists(row, max_size=8), min_size=1, max_size=3))
    return string_ids, files


def _write_catalog(d: Path, string_ids: bool, files: list[list[tuple]]) -> list[tuple]:
    d.mkdir()
    id_type = pa.string() if string_ids else pa.int64()
    for i, rows in enumerate(files):
        table = pa.table(
            {
                "listing_id": pa.array([r[0] for r in rows], id_type),
                "title": pa.array([r[1] for r in rows], pa.string()),
                "description": pa.array([r[2] for r in rows], pa.string()),
            }
        )
        pq.write_table(table, d / f"f{i}.parquet", row_group_size=5)
    return [r for rows in files for r in rows]


def _check_accounted(out: Path, rows: list[tuple]) -> None:
    parts = sorted(p for p in out.glob("part-*.parquet"))
    qparts = sorted((out / "quarantine").glob("part-*.parquet"))
    got_out = pq.read_table(parts) if parts else None
    got_q = pq.read_table(qparts) if qparts else None
    out_ids = got_out.column("listing_id").to_pylist() if got_out is not None else []
    q_ids = got_q.column("listing_id").to_pylist() if got_q is not None else []
    # Every input row exactly once, in one place: the multisets of ids agree (nulls included).
    assert Counter(out_ids + q_ids) == Counter(r[0] for r in rows)
    assert len(out_ids) + len(q_ids) == len(rows)
    assert None not in out_ids and len(set(out_ids)) == len(out_ids)
    # Exactly the first occurrence of each id with non-empty cleaned text is embedded.
    template, seen, want = Template(TEMPLATE), set(), set()
    for i, title, description in rows:
        if i is None or i in seen:
            continue
        seen.add(i)
        if template.render({"title": title, "description": description}):
            want.add(i)
    assert set(out_ids) == want
    for p in parts:
        assert pq.read_schema(p).names == ["listing_id", "embedding"]
    for p in qparts:
        assert pq.read_schema(p).names == ["listing_id", "reason", "text"]
    if got_q is not None:
        assert set(got_q.column("reason").to_pylist()) <= set(REASONS)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(catalogs())
def test_generated_catalogs_every_row_accounted_once(tmp_path_factory, generated):
    string_ids, files = generated
    root = tmp_path_factory.mktemp("fuzz")
    rows = _write_catalog(root / "in", string_ids, files)
    result = run_stages(root / "in", root / "out")
    assert result["rows_in"] == len(rows)
    s = result["stats"]
    assert sum(x["rows_out"] + x["rows_quarantined"] for x in s) == len(rows)
    _check_accounted(root / "out", rows)


# ---------------------------------------------------------------------- end to end on Ray

NASTY = [
    ["a", "Jeans 👖", "<p>blue &amp; <b>worn</b></p>"],
    ["b", None, None],  # empty_text
    [None, "no id", "x"],  # missing_id
    ["a", "again", "duplicate of a"],  # duplicate_id, across a file boundary below
    ["𝔁", "x" * 200_000, "y" * 50_000],  # huge, truncated by the tokenizer
    ["", "empty-string id", "is an id, not a null"],
    ["c", "\x00\x07ctrl", "Ã©tÃ© mojibake"],
    ["d", "   ", "\u200b"],  # zero-width space only: cleaned text is not empty
]


@pytest.fixture(scope="module")
def nasty_run(ray_cluster, tmp_path_factory, tiny_distilbert_dir):
    root = tmp_path_factory.mktemp("nasty")
    files = [NASTY[:3], [], NASTY[3:]]  # the middle file is empty
    rows = _write_catalog(root / "in", True, [[tuple(r) for r in f] for f in files])
    out = root / "out"
    config = EmbedConfig(
        input=str(root / "in"),
        output=str(out),
        model=tiny_distilbert_dir,
        rows_per_unit=2,
        num_actors=1,
    )
    manifest = run(config)
    return rows, out, manifest


def test_nasty_catalog_end_to_end_on_ray(nasty_run):
    rows, out, manifest = nasty_run
    _check_accounted(out, rows)
    assert manifest["rows_in"] == len(rows)
    assert manifest["rows_out"] + manifest["rows_quarantined"] == len(rows)
    assert manifest["quarantine_reasons"]["duplicate_id"] == 1
    assert manifest["quarantine_reasons"]["missing_id"] == 1


def test_output_holds_only_input_ids_reasons_and_text(nasty_run):
    """Nothing but the input's id, a reason and the raw template render of its own fields."""
    rows, out, _ = nasty_run
    template = Template(TEMPLATE)
    q = pq.read_table(sorted((out / "quarantine").glob("part-*.parquet"))).to_pylist()
    raw = Counter(
        (r[0], template.render({"title": r[1], "description": r[2]}, clean=False)) for r in rows
    )
    for row in q:
        assert set(row) == {"listing_id", "reason", "text"}
        assert raw[(row["listing_id"], row["text"] or "")] >= 1
    for p in out.glob("part-*.parquet"):
        t = pq.read_table(p)
        assert t.column_names == ["listing_id", "embedding"]
        assert set(t.column("listing_id").to_pylist()) <= {r[0] for r in rows}


# ---------------------------------------------------------------------- corrupt input, exit 2


def _valid_parquet(path: Path) -> None:
    pq.write_table(
        pa.table({"listing_id": [1, 2], "title": ["a", "b"], "description": ["c", "d"]}), path
    )


@pytest.mark.parametrize("damage", ["truncated", "not_parquet", "footer_only_magic"])
def test_corrupt_parquet_exits_2_naming_the_file_and_writes_nothing(tmp_path, capsys, damage):
    d = tmp_path / "in"
    d.mkdir()
    _valid_parquet(d / "good.parquet")
    bad = d / "bad.parquet"
    _valid_parquet(bad)
    data = bad.read_bytes()
    bad.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "not_parquet": b"listing_id,title\n1,jeans\n",
            "footer_only_magic": b"PAR1" + b"\x00" * 64 + b"PAR1",
        }[damage]
    )
    out = tmp_path / "out"
    assert main(["embed", "--input", str(d), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    assert not out.exists()


def test_id_type_differing_between_files_exits_2(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _valid_parquet(d / "a.parquet")
    pq.write_table(
        pa.table({"listing_id": ["x"], "title": ["a"], "description": ["b"]}), d / "b.parquet"
    )
    out = tmp_path / "out"
    assert main(["embed", "--input", str(d), "--output", str(out)]) == 2
    assert "b.parquet: id column 'listing_id' is string" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------- security basics


def test_model_with_only_pickled_weights_exits_2(tmp_path, tiny_distilbert_dir, capsys):
    """A model dir with pytorch_model.bin and no safetensors is refused before any work."""
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled-model"
    model.mkdir()
    for f in Path(tiny_distilbert_dir).iterdir():
        if f.suffix != ".safetensors":
            (model / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(Path(tiny_distilbert_dir) / "model.safetensors"))
    torch.save(weights, model / "pytorch_model.bin")
    d = tmp_path / "in"
    d.mkdir()
    _valid_parquet(d / "a.parquet")
    out = tmp_path / "out"
    assert main(["embed", "--input", str(d), "--output", str(out), "--model", str(model)]) == 2
    assert "safetensors required" in capsys.readouterr().err
    assert not out.exists()


def test_models_are_loaded_without_remote_code_and_from_safetensors(monkeypatch, minilm_dir):
    import sentence_transformers

    import fashion_batch
    from fashion_batch.encoders import models as encoder

    seen = {}

    class Spy:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise RuntimeError("spy: stop here")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Spy)
    with pytest.raises(RuntimeError, match="spy"):
        encoder.load_model(minilm_dir, "cpu")
    assert seen["trust_remote_code"] is False
    assert seen["local_files_only"] is True
    assert seen["model_kwargs"]["use_safetensors"] is True
    source = Path(fashion_batch.__file__).parent
    for path in source.rglob("*.py"):
        assert "trust_remote_code=True" not in path.read_text(), path
    for name in (
        "encoders/models.py",
        "embed/job.py",
        "embed/stages.py",
    ):  # the model-loading path unpickles nothing
        assert "torch.load(" not in (source / name).read_text(), name
