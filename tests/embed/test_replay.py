"""Replaying the quarantine (docs/quarantine.md): `--fix-template` / `--fix-invalid-utf8` in the
text stage, and `fashion-batch replay-quarantine SNAPSHOT --output NEW` on a local Ray cluster.

A replay must recover exactly the rows the fix accepts, carry every row SNAPSHOT embedded with
its vector byte for byte, keep every row with an id problem quarantined, account for every input
row once, leave SNAPSHOT's files as they were, and give a NEW that a nightly `--previous` builds
on. Bad replays are exit 2 with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch import replay_quarantine
from fashion_batch.cli import main
from fashion_batch.embed import EmbedConfig, run
from fashion_batch.embed.replay import ReplayConfig
from fashion_batch.embed.stages import RAW, REASON, TEXT, PrepareText
from fashion_batch.errors import InputError

NOT_UTF8 = b"Caf\xe9 cr\xe8me"  # Latin-1 bytes: not valid UTF-8

# ----------------------------------------------------------------- the fix in the text stage


def test_a_fix_template_recovers_empty_text_rows():
    batch = pa.table(
        {
            "listing_id": pa.array([1, 2, 3, None, 5], pa.int64()),
            "title": [None, "Top", None, None, "  <br/> "],
            "category": ["red coat", "blue top", None, "orphan", "wool <b>scarf</b>"],
        }
    )
    plain = PrepareText("{title}", "listing_id")(batch)
    assert plain.column(REASON).to_pylist() == [
        "empty_text",
        None,
        "empty_text",
        "missing_id",
        "empty_text",
    ]
    out = PrepareText("{title}", "listing_id", fix_template="{category}")(batch)
    assert out.column(REASON).to_pylist() == [None, None, "empty_text", "missing_id", None]
    assert out.column(TEXT).to_pylist()[:2] == ["red coat", "Top"]  # cleaned like any text
    assert out.column(TEXT).to_pylist()[4] == "wool scarf"
    assert out.column(RAW).to_pylist()[2:4] == plain.column(RAW).to_pylist()[2:4]


def test_a_fix_template_recovers_template_error_rows_and_keeps_the_reason_it_fails():
    batch = pa.table(
        {
            "listing_id": [1, 2, 3],
            "title": ["Coat", "Top", None],
            "code": pa.array([65, 2**40, 2**40], pa.int64()),
            "category": [None, "blue top", None],
        }
    )
    plain = PrepareText("{title} {code:c}", "listing_id")(batch)
    assert plain.column(REASON).to_pylist() == [None, "template_error", "template_error"]
    out = PrepareText("{title} {code:c}", "listing_id", fix_template="{category}")(batch)
    assert out.column(REASON).to_pylist() == [None, None, "template_error"]
    assert out.column(TEXT).to_pylist()[:2] == ["Coat A", "blue top"]
    assert out.column(RAW).to_pylist()[2] == plain.column(RAW).to_pylist()[2]


def test_the_fix_never_touches_id_problems_or_invalid_utf8_without_its_flag():
    batch = pa.table(
        {
            "listing_id": pa.array([1, 2, float("nan"), 4], pa.float64()),
            "title": pa.array([None, None, None, NOT_UTF8], pa.binary()),
            "category": ["coat", None, "top", "jeans"],
        }
    )
    out = PrepareText("{title}", "listing_id", fix_template="{category}")(batch)
    assert out.column(REASON).to_pylist() == [None, "empty_text", "invalid_id", "invalid_utf8"]
    assert out.column(TEXT).to_pylist()[0] == "coat"
    assert out.column("__hash").to_pylist()[0] is not None  # carried by --previous like any row


def test_fix_invalid_utf8_embeds_bad_bytes_as_replacement_characters():
    batch = pa.table(
        {
            "listing_id": [1, 2, 3],
            "title": pa.array([NOT_UTF8, b"Blue jeans", None], pa.binary()),
            "category": pa.array([None, None, NOT_UTF8], pa.binary()),
        }
    )
    out = PrepareText("{title}", "listing_id", fix_invalid_utf8=True)(batch)
    assert out.column(REASON).to_pylist() == [None, None, "empty_text"]
    assert out.column(TEXT).to_pylist()[0] == "Caf\ufffd cr\ufffdme"
    # a fix template's bad bytes: the row stays quarantined unless --fix-invalid-utf8 says so
    strict = PrepareText("{title}", "listing_id", fix_template="{category}")(batch)
    assert strict.column(REASON).to_pylist() == ["invalid_utf8", None, "empty_text"]
    lenient = PrepareText(
        "{title}", "listing_id", fix_template="{category}", fix_invalid_utf8=True
    )(batch)
    assert lenient.column(REASON).to_pylist() == [None, None, None]
    assert lenient.column(TEXT).to_pylist()[2] == "Caf\ufffd cr\ufffdme"


def test_fix_settings_are_checked_like_the_template(tmp_path):
    base = {"input": str(tmp_path), "output": str(tmp_path / "out")}
    config = EmbedConfig(**base, fix_template="{category} by {brand}")
    assert config.columns == ["listing_id", "title", "description", "category", "brand"]
    with pytest.raises(InputError, match="--fix-template"):
        EmbedConfig(**base, fix_template="{0}")
    with pytest.raises(InputError, match="--fix-template is the --text-template"):
        EmbedConfig(**base, fix_template="{title}. {description}")
    with pytest.raises(InputError, match="needs a fix"):
        ReplayConfig(snapshot=str(tmp_path), output=str(tmp_path / "new"))


# ------------------------------------------------------- replay-quarantine on a local cluster

FIXED = {25: "red wool coat", 26: "blue denim jacket"}  # empty under the template, not the fix
LISTED = [(i, f"item {i}", f"a {c} piece {i}", c) for i, c in enumerate(["coat", "top"] * 12, 1)]
ROWS = [
    # a recovered row amid embedded ones: the gate and the drift report, which match a part's
    # rows to the input's by position, must prepare the rows with the fix as the run did
    *LISTED[:5],
    (25, None, "   ", "red wool coat"),
    *LISTED[5:],
    (26, "<br/>", None, "blue <i>denim</i> jacket"),
    (27, None, None, None),  # empty under both: stays empty_text
    (None, "Orphan", "no id", "coat"),  # missing_id: never replayed
    (3, None, None, "a later copy of 3"),  # duplicate_id: never replayed
]
STILL = {"empty_text": 1, "missing_id": 1, "duplicate_id": 1}
FIX = "{category}"


def _catalog(d: Path) -> Path:
    d.mkdir(parents=True)
    columns = list(zip(*ROWS, strict=True))
    table = pa.table(
        {
            "listing_id": pa.array(columns[0], pa.int64()),
            "title": pa.array(columns[1], pa.string()),
            "description": pa.array(columns[2], pa.string()),
            "category": pa.array(columns[3], pa.string()),
        }
    )
    pq.write_table(table.slice(0, 15), d / "cat-0.parquet")
    pq.write_table(table.slice(15), d / "cat-1.parquet")
    return d


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _vectors(out: Path) -> dict[int, bytes]:
    t = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))
    emb = t.column("embedding").combine_chunks()
    flat = emb.flatten().to_numpy().reshape(len(t), emb.type.list_size)
    return {i: v.tobytes() for i, v in zip(t.column("listing_id").to_pylist(), flat, strict=True)}


def _quarantine(out: Path) -> list[tuple]:
    q = [pq.read_table(p) for p in sorted((out / "quarantine").glob("part-*.parquet"))]
    t = pa.concat_tables(q)
    return sorted(
        zip(t.column("listing_id").to_pylist(), t.column("reason").to_pylist(), strict=True),
        key=str,
    )


@pytest.fixture(scope="module")
def replayed(ray_cluster, tmp_path_factory, tiny_distilbert_dir):
    """SNAPSHOT embedded with the default template (its files' bytes kept), then replayed with
    `--fix-template {category}` into NEW through the CLI."""
    root = tmp_path_factory.mktemp("replay")
    catalog = _catalog(root / "catalog")
    snapshot = root / "snapshot"
    config = EmbedConfig(
        input=str(catalog),
        output=str(snapshot),
        model=tiny_distilbert_dir,
        backend="torch",
        rows_per_unit=7,
        num_actors=1,
    )
    run(config)
    before = _files(snapshot)
    argv = ["replay-quarantine", str(snapshot), "--output", str(root / "new"), "--fix-template"]
    assert main([*argv, FIX]) == 0
    return root, catalog, snapshot, before, argv


def test_a_replay_embeds_the_rows_the_fix_accepts_and_carries_the_rest(
    replayed, tiny_distilbert_dir
):
    from sentence_transformers import SentenceTransformer

    root, _, snapshot, _, _ = replayed
    new = root / "new"
    old_vectors, new_vectors = _vectors(snapshot), _vectors(new)
    assert set(new_vectors) == set(old_vectors) | set(FIXED)
    assert not set(old_vectors) & set(FIXED)
    for i, vector in old_vectors.items():
        assert new_vectors[i] == vector, i  # carried byte for byte, not re-encoded
    model = SentenceTransformer(tiny_distilbert_dir, device="cpu")
    fresh = model.encode(list(FIXED.values()), convert_to_numpy=True)
    for i, expected in zip(FIXED, fresh, strict=True):
        got = np.frombuffer(new_vectors[i], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)

    assert _quarantine(new) == sorted(
        [(27, "empty_text"), (None, "missing_id"), (3, "duplicate_id")], key=str
    )
    manifest = json.loads((new / "manifest.json").read_text())
    assert manifest["rows_in"] == len(ROWS) == manifest["rows_out"] + manifest["rows_quarantined"]
    assert {r: n for r, n in manifest["quarantine_reasons"].items() if n} == STILL
    assert manifest["incremental"]["unchanged"] == len(old_vectors)
    assert manifest["incremental"]["new"] == len(FIXED)
    assert manifest["fix_template"] == FIX and manifest["text_template"] == "{title}. {description}"
    assert manifest["replay"] == {
        "of": str(snapshot),
        "of_run": json.loads((snapshot / "manifest.json").read_text())["run_digest"],
        "fix_template": FIX,
        "fix_invalid_utf8": False,
        "recovered": 2,
        "recovered_by_reason": {"template_error": 0, "empty_text": 2},
        "still_quarantined": {"template_error": 0, "empty_text": 1},
    }
    assert "argv" in manifest["extra"]  # the command line, as embed records it


def test_a_replay_leaves_the_snapshot_as_it_was_and_a_rerun_changes_nothing(replayed):
    root, _, snapshot, before, _ = replayed
    assert _files(snapshot) == before
    new = _files(root / "new")
    result = replay_quarantine(snapshot=str(snapshot), output=str(root / "new"), fix_template=FIX)
    assert result.rows_out == 24 + len(FIXED) and result.manifest["replay"]["recovered"] == 2
    assert _files(root / "new") == new
    assert _files(snapshot) == before


def test_a_nightly_run_builds_on_the_replay(replayed, tiny_distilbert_dir):
    root, catalog, _, _, _ = replayed
    tonight = run(
        EmbedConfig(
            input=str(catalog),
            output=str(root / "tonight"),
            model=tiny_distilbert_dir,
            backend="torch",
            num_actors=1,
            fix_template=FIX,
            previous=str(root / "new"),
        )
    )
    assert tonight["incremental"]["unchanged"] == 24 + len(FIXED)
    assert tonight["incremental"]["new"] == tonight["incremental"]["changed"] == 0
    before, after = _vectors(root / "new"), _vectors(root / "tonight")
    assert before.keys() == after.keys()
    # carried byte for byte, but for the sample a nightly embeds again for its checks
    moved = [i for i in before if before[i] != after[i]]
    assert len(moved) <= tonight["incremental"]["rechecked"]
    for i in moved:
        old, new = (np.frombuffer(v, np.float32) for v in (before[i], after[i]))
        np.testing.assert_allclose(new, old, atol=1e-5)


def _refused(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_bad_replays_are_exit_2_and_write_nothing(replayed, capsys, tmp_path):
    root, _, snapshot, before, argv = replayed
    no_manifest = tmp_path / "unfinished"
    no_manifest.mkdir()
    _refused(
        capsys,
        [
            "replay-quarantine",
            str(no_manifest),
            "--output",
            str(tmp_path / "x"),
            "--fix-template",
            FIX,
        ],
        "no manifest.json",
    )
    _refused(capsys, [*argv[:2], "--output", str(snapshot), "--fix-template", FIX], "overlaps")
    _refused(
        capsys, [*argv[:2], "--output", str(snapshot / "inside"), "--fix-template", FIX], "overlaps"
    )
    _refused(capsys, [*argv[:2], "--output", str(tmp_path / "x")], "needs a fix")
    _refused(
        capsys,
        [*argv[:2], "--output", str(tmp_path / "x"), "--fix-invalid-utf8"],
        "quarantined no row as invalid_utf8",
        "duplicate_id=1",
    )
    _refused(
        capsys,
        [*argv[:2], "--output", str(tmp_path / "x"), "--fix-template", "{brand}"],
        "missing column 'brand'",
        "--fix-template",
    )
    new = str(root / "new")
    _refused(
        capsys,
        ["replay-quarantine", new, "--output", str(tmp_path / "x"), "--fix-template", "{title}"],
        "was itself made with --fix-template '{category}'",
        str(snapshot),
    )
    _refused(
        capsys,
        ["replay-quarantine", new, "--output", str(tmp_path / "x"), "--fix-template", FIX],
        "already made with this fix",
    )
    redacted = tmp_path / "redacted"
    shutil.copytree(snapshot, redacted)
    manifest = json.loads((redacted / "manifest.json").read_text())
    manifest["input"] = "s3://***@bucket/catalog"
    (redacted / "manifest.json").write_text(json.dumps(manifest))
    _refused(
        capsys,
        [
            "replay-quarantine",
            str(redacted),
            "--output",
            str(tmp_path / "x"),
            "--fix-template",
            FIX,
        ],
        "redacted",
        "--input",
    )
    assert not (tmp_path / "x").exists() and not (snapshot / "inside").exists()
    assert _files(snapshot) == before
