"""Reruns, resume and incremental runs of the embed job on a local Ray cluster (tiny DistilBERT).

A crash is simulated here by stopping a run before it publishes and taking its staged units back
to the state a killed run leaves (no manifest, some units uncommitted, stale temporary files);
tests/embed/test_faults.py kills real processes (actor, node, driver)."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.embed import EmbedConfig, run
from fashion_batch.embed import job as embed_job


def _catalog(d: Path, rows: list[tuple], files: int = 2) -> Path:
    """rows: (listing_id, title, description), split over `files` files."""
    d.mkdir(parents=True)
    table = pa.table(
        {
            "listing_id": pa.array([r[0] for r in rows], pa.int64()),
            "title": pa.array([r[1] for r in rows], pa.string()),
            "description": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    step = -(-len(rows) // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), d / f"cat-{i}.parquet")
    return d


V1 = [(i, f"item {i}", f"description of item {i}") for i in range(1, 41)]


def _files(out: Path) -> dict[str, bytes]:
    """Every data file of an output (parts, quarantine parts, state), by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }


def _config(catalog, out, model, **kw) -> EmbedConfig:
    return EmbedConfig(
        input=str(catalog), output=str(out), model=model, rows_per_unit=7, num_actors=1, **kw
    )


@pytest.fixture(scope="module")
def full(ray_cluster, tmp_path_factory, tiny_distilbert_dir):
    """A finished run over V1 (40 rows, 2 files → 6 units), and its files' bytes."""
    root = tmp_path_factory.mktemp("resume")
    catalog = _catalog(root / "v1", V1)
    out = root / "full"
    manifest = run(_config(catalog, out, tiny_distilbert_dir))
    return catalog, out, manifest, _files(out)


def test_rerun_with_overwrite_gives_the_same_files_and_bytes(full, tiny_distilbert_dir):
    catalog, out, manifest, before = full
    assert manifest["units"] == {"total": 6, "resumed": 0, "done_now": 6}
    again = run(_config(catalog, out, tiny_distilbert_dir, overwrite=True))
    assert again["finished_at"] >= manifest["finished_at"]
    assert _files(out) == before  # same names, bytes-identical embeddings, hashes, state


class _Killed(Exception):
    """The driver 'dies' right before publishing."""


def test_resume_redoes_only_uncommitted_units(full, tiny_distilbert_dir, tmp_path, monkeypatch):
    catalog, _, manifest, before = full
    out = tmp_path / "killed"
    real_publish = embed_job.publish

    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(embed_job, "publish", killed)
    with pytest.raises(_Killed):
        run(_config(catalog, out, tiny_distilbert_dir))
    # What a run killed mid-way leaves: no manifest, units 2 and 4 not committed (unit 4's staged
    # file even written, its commit record not), half-written temporaries.
    assert not (out / "manifest.json").exists() and not list(out.glob("part-*"))
    staging = out / "_staging"
    for unit in (2, 4):
        (out / "_state" / "done" / f"unit-0000{unit}.json").unlink()
    (staging / "unit-00002.parquet").unlink()
    (staging / ".unit-00002.parquet.tmp-deadbeef").write_bytes(b"half a file")
    (staging / "hashes" / ".unit-00002.parquet.tmp-0badf00d").write_bytes(b"half")
    kept = {p.name: p.stat().st_mtime_ns for p in staging.glob("unit-*.parquet")}
    seen = {}

    def publish(*args, **kwargs):  # what the staged units look like when the rerun publishes
        seen.update({p.name: p.stat().st_mtime_ns for p in staging.glob("unit-*.parquet")})
        seen["tmp"] = [p.name for p in out.rglob("*") if ".tmp-" in p.name]
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(embed_job, "publish", publish)
    resumed = run(_config(catalog, out, tiny_distilbert_dir))

    assert resumed["units"] == {"total": 6, "resumed": 4, "done_now": 2}
    for key in ("rows_in", "rows_out", "rows_quarantined", "files", "dim"):
        assert resumed[key] == manifest[key]
    assert seen.pop("tmp") == []  # the killed run's temporaries were tidied
    assert sorted(seen) == [f"unit-0000{u}.parquet" for u in range(6)]
    for name, mtime in kept.items():
        if name != "unit-00004.parquet":
            assert seen[name] == mtime, f"{name} was rewritten"
    assert _files(out) == before  # nothing lost or doubled, same bytes; staging dropped
    ids = pq.read_table(sorted(out.glob("part-*.parquet"))).column("listing_id").to_pylist()
    assert sorted(ids) == [r[0] for r in V1]


def test_unfinished_output_of_another_run_is_refused_without_overwrite(
    full, tiny_distilbert_dir, capsys
):
    catalog, out, _, before = full
    (out / "manifest.json").unlink()  # an unfinished run ...
    argv = ["embed", "--input", str(catalog), "--output", str(out)]
    argv += ["--model", tiny_distilbert_dir, "--rows-per-part", "7", "--num-actors", "1"]
    assert main([*argv, "--normalize"]) == 2  # ... that another command cannot take over
    err = capsys.readouterr().err
    assert "differs in: normalize" in err and "--overwrite" in err
    assert _files(out) == before and not (out / "manifest.json").exists()
    assert main([*argv, "--normalize", "--overwrite"]) == 0
    norms = np.linalg.norm(_embeddings(out)[1], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_part_files_of_an_unknown_run_are_refused(tmp_path, dirty_catalog, capsys):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"x": [1]}), out / "part-00000.parquet")
    assert main(["embed", "--input", str(dirty_catalog), "--output", str(out)]) == 2
    assert "files of an unknown run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]


# ---------------------------------------------------------------------- incremental


def _v2() -> list[tuple]:
    """V1 after a day: 1-5 delisted, 6-10 edited, 12 blanked, 41-50 new, a duplicate, a null id.
    (Whitespace/markup-only edits, like 11's, do not change the cleaned text: unchanged.)"""
    rows = {i: (i, t, d) for i, t, d in V1 if i > 5}
    for i in range(6, 11):
        rows[i] = (i, f"item {i} (reduced!)", f"description of item {i}")
    rows[11] = (11, " item   11 ", "<b>description</b> of item 11")
    rows[12] = (12, None, "  ")
    new = [(i, f"new item {i}", f"fresh listing {i}") for i in range(41, 51)]
    return [*new, *rows.values(), (20, "dup of 20", "later copy"), (None, "no id", "x")]


def _embeddings(out: Path) -> tuple[list, np.ndarray]:
    t = pq.read_table(sorted(out.glob("part-*.parquet")))
    return t.column("listing_id").to_pylist(), np.array(t.column("embedding").to_pylist())


@pytest.fixture(scope="module")
def incremental(full, tmp_path_factory, tiny_distilbert_dir):
    catalog_v1, out_v1, _, _ = full
    # The earlier tests rewrote out_v1; make a clean V1 output to build on.
    root = tmp_path_factory.mktemp("incremental")
    prev = root / "prev"
    run(_config(catalog_v1, prev, tiny_distilbert_dir))
    catalog = _catalog(root / "v2", _v2(), files=3)
    inc = run(_config(catalog, root / "inc", tiny_distilbert_dir, previous=str(prev)))
    ref = run(_config(catalog, root / "ref", tiny_distilbert_dir))
    return prev, (root / "inc", inc), (root / "ref", ref)


def test_incremental_counts_new_changed_unchanged_removed(incremental):
    _, (_, inc), _ = incremental
    assert inc["incremental"]["new"] == 10
    assert inc["incremental"]["changed"] == 5
    assert inc["incremental"]["unchanged"] == 29  # 13..40 and 11 (same cleaned text)
    assert inc["incremental"]["removed"] == 6  # 1..5 delisted, 12 now quarantined
    assert (inc["rows_in"], inc["rows_out"], inc["rows_quarantined"]) == (47, 44, 3)


def test_incremental_result_equals_a_full_run(incremental):
    prev, (inc_out, inc), (ref_out, ref) = incremental
    for key in ("rows_in", "rows_out", "rows_quarantined", "quarantine_reasons", "files"):
        assert inc[key] == ref[key]
    inc_ids, inc_emb = _embeddings(inc_out)
    ref_ids, ref_emb = _embeddings(ref_out)
    assert inc_ids == ref_ids  # same rows, same files, same order
    np.testing.assert_allclose(inc_emb, ref_emb, atol=1e-5)
    for name in (p.name for p in (ref_out / "quarantine").glob("part-*.parquet")):
        assert pq.read_table(inc_out / "quarantine" / name).equals(
            pq.read_table(ref_out / "quarantine" / name)
        )
    assert sorted(p.name for p in inc_out.rglob("*.parquet")) == sorted(
        p.name for p in ref_out.rglob("*.parquet")
    )
    # Unchanged rows were carried over bit for bit, not recomputed.
    prev_ids, prev_emb = _embeddings(prev)
    prev_by_id = dict(zip(prev_ids, prev_emb, strict=True))
    for i, vector in zip(inc_ids, inc_emb, strict=True):
        if 11 <= i <= 40 and i != 12:
            assert np.array_equal(vector, prev_by_id[i])


def test_previous_must_match_model_template_and_normalize(incremental, tiny_distilbert_dir, capsys):
    prev, _, _ = incremental
    base = ["embed", "--input", str(prev.parent / "v2"), "--previous", str(prev)]
    base += ["--model", tiny_distilbert_dir, "--rows-per-part", "7"]
    cases = [
        (["--normalize"], "another normalize"),
        (["--text-template", "{title}"], "another text template"),
        (["--model", "builtin:minilm"], "another model weights"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = prev.parent / f"never-{i}"
        assert main([*base, "--output", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    assert main([*base, "--output", str(prev)]) == 2
    assert "--previous must be another output" in capsys.readouterr().err
    unfinished = prev.parent / "unfinished"
    unfinished.mkdir()
    out = prev.parent / "never"
    assert main([*base[:3], "--previous", str(unfinished), "--output", str(out)]) == 2
    assert "not a finished output" in capsys.readouterr().err
    assert not out.exists()
