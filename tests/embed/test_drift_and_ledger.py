"""The drift report and the cost/throughput ledger on a local Ray cluster (tiny DistilBERT).

A nightly rerun over an unchanged catalog with the same model must show no drift (same-text cosine
1 within 1e-5, neighbour overlap 1, no centroid shift); an output made by a perturbed copy of the
model must show drift, through `fashion-batch drift`. The ledger's counts must add up."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.embed import EmbedConfig, run
from fashion_batch.encoders.tokens import TokenCount

ROWS = [
    (i, f"item {i} in wool", f"a {c} piece number {i}", c)
    for i, c in zip(range(1, 41), ["coat", "dress", "shoes", "bag"] * 10, strict=True)
]
QUERIES = ["warm wool coat", "summer dress", "leather shoes", "small bag", "piece number 7"]


def _catalog(d: Path) -> Path:
    d.mkdir(parents=True)
    columns = list(zip(*ROWS, strict=True))
    table = pa.table(
        {
            "listing_id": pa.array(columns[0], pa.int64()),
            "title": pa.array(columns[1]),
            "description": pa.array(columns[2]),
            "category": pa.array(columns[3]),
        }
    )
    pq.write_table(table.slice(0, 20), d / "cat-0.parquet")
    pq.write_table(table.slice(20), d / "cat-1.parquet")
    return d


def _config(catalog, out, model, **kw) -> EmbedConfig:
    return EmbedConfig(
        input=str(catalog),
        output=str(out),
        model=model,
        backend="torch",
        rows_per_unit=7,
        num_actors=1,
        **kw,
    )


def _perturbed(model_dir: str, out: Path) -> str:
    """A copy of the model whose weights got 5% Gaussian noise: another model, same shape."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = load_file(out / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    noisy = {
        k: v + 0.05 * v.float().std() * torch.randn(v.shape, generator=g)
        if v.is_floating_point() and v.numel() > 1
        else v
        for k, v in weights.items()
    }
    save_file(noisy, out / "model.safetensors")
    return str(out)


@pytest.fixture(scope="module")
def nightly(ray_cluster, tmp_path_factory, tiny_distilbert_dir):
    """Last night's full run, tonight's --previous rerun over the same catalog, and a full run
    with a perturbed model."""
    root = tmp_path_factory.mktemp("drift")
    catalog = _catalog(root / "catalog")
    queries = root / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"query": q, "relevant_ids": [1]}) + "\n" for q in QUERIES)
    )
    prev = run(_config(catalog, root / "prev", tiny_distilbert_dir))
    tonight = run(
        _config(
            catalog,
            root / "tonight",
            tiny_distilbert_dir,
            previous=str(root / "prev"),
            probe_queries=str(queries),
            drift_category_column="category",
            price_per_hour=1.0,
        )
    )
    other = _perturbed(tiny_distilbert_dir, root / "perturbed-model")
    changed = run(_config(catalog, root / "changed", other))
    return root, queries, prev, tonight, changed


def test_a_nightly_rerun_with_the_same_model_shows_no_drift(nightly):
    root, _, _, tonight, _ = nightly
    entry = tonight["drift"]
    report = json.loads((root / "tonight" / entry["report"]).read_text())
    assert (root / "tonight" / entry["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    same = report["same_text"]
    rechecked = tonight["incremental"]["rechecked"]  # embedded again, not carried: recheck.py
    assert 0 < rechecked < 40 and tonight["incremental"]["unchanged"] == 40
    assert same["rows"] == rechecked and sum(same["histogram"]["counts"]) == rechecked
    assert "embedded again" in same["compared"]  # not the carried copies
    assert same["min"] > 1 - 1e-5 and entry["same_text_cos_min"] == same["min"]
    assert report["neighbours"]["overlap@10"] == 1.0 == entry["overlap@10"]
    assert len(report["neighbours"]["queries"]) == len(QUERIES)
    shifts = report["centroid_shift"]
    assert sorted(shifts) == ["bag", "coat", "dress", "shoes"]
    assert all(s["listings"] == 10 and abs(s["shift"]) < 1e-6 for s in shifts.values())


def test_drift_command_shows_a_model_change_and_no_drift_for_a_rerun(nightly, capsys):
    root, queries, _, _, _ = nightly
    base = ["drift", "--old", str(root / "prev"), "--probe-queries", str(queries)]
    base += ["--category-column", "category", "--json"]
    assert main([*base, "--new", str(root / "tonight")]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["same_text"]["min"] > 1 - 1e-5 and same["neighbours"]["overlap@10"] == 1.0

    report_dir = root / "cli-report"
    assert main([*base, "--new", str(root / "changed"), "--report-dir", str(report_dir)]) == 0
    moved = json.loads(capsys.readouterr().out)
    assert moved["models"]["old"]["sha256"] != moved["models"]["new"]["sha256"]
    assert moved["same_text"]["rows"] == 40 and moved["same_text"]["min"] < 0.999
    assert moved["neighbours"]["overlap@10"] < 1.0
    assert max(s["shift"] for s in moved["centroid_shift"].values()) > 1e-4
    assert json.loads((report_dir / "drift.json").read_text()) == moved
    assert (report_dir / "drift.png").stat().st_size > 0

    assert main(["drift", "--old", str(root / "prev"), "--new", str(root / "catalog")]) == 2
    err = capsys.readouterr().err
    assert "--new" in err and "no manifest.json" in err


def test_ledger_counts_add_up(nightly):
    _, _, prev, tonight, _ = nightly
    full, inc = prev["ledger"], tonight["ledger"]
    assert full["rows"]["embedded"] == prev["rows_out"] == 40 and full["rows"]["carried"] == 0
    rechecked = tonight["incremental"]["rechecked"]  # the drift sample, embedded again
    assert inc["rows"]["embedded"] == rechecked and inc["rows"]["carried"] == 40 - rechecked
    for ledger in (full, inc):
        assert (
            ledger["rows"]["embedded"] + ledger["rows"]["carried"] + ledger["rows"]["resumed"] == 40
        )
        for stage in ("read", "prepare", "write"):
            assert ledger["stages"][stage]["seconds"] > 0 and ledger["stages"][stage]["rows"] == 40
        assert (
            ledger["peak_memory_mib"]["driver"] > 0 and ledger["peak_memory_mib"]["actor_max"] > 0
        )
        assert ledger["actors"]["count"] == 1 and ledger["actors"]["gpu_seconds"] == 0
    assert full["stages"]["encode"]["seconds"] > 0 and full["stages"]["encode"]["rows_per_s"] > 0
    assert 0 < full["actors"]["busy_encode_seconds"] <= full["actors"]["actor_seconds"]
    tokens = full["tokens"]
    assert 0 < tokens["real"] <= tokens["padded"] and 0 <= tokens["padding_waste"] < 1
    assert 0 < inc["tokens"]["padded"] < tokens["padded"]  # only the rechecked rows encoded
    cost = inc["cost"]
    assert cost["price_per_hour"] == 1.0 and cost["nodes"] == 1
    assert cost["estimated_usd"] == pytest.approx(inc["wall_s"] / 3600, rel=1e-2)
    assert full["cost"]["estimated_usd"] is None  # no --price-per-hour


def test_report_prints_the_ledger(nightly, tmp_path, capsys):
    root, _, _, tonight, _ = nightly
    assert main(["report", str(root / "tonight")]) == 0
    out = capsys.readouterr().out
    for label in (
        "rows embedded",
        "rows carried",
        "encode",
        "GPU-seconds",
        "padding waste",
        "peak memory",
        "estimated cost",
    ):
        assert label in out, label
    assert main(["report", str(root / "tonight"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == tonight["ledger"]
    assert main(["report", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_a_missing_category_column_is_exit_2_before_writing(nightly, tiny_distilbert_dir, capsys):
    root, _, _, _, _ = nightly
    out = root / "never"
    argv = ["embed", "--input", str(root / "catalog"), "--output", str(out), "--model"]
    argv += [tiny_distilbert_dir, "--backend", "torch", "--previous", str(root / "prev")]
    assert main([*argv, "--drift-category-column", "colour"]) == 2
    assert "--drift-category-column 'colour'" in capsys.readouterr().err
    assert not out.exists()


def test_token_count_matches_what_sentence_transformers_pads(minilm):
    texts = ["a", "a much longer text about a wool coat", "mid length text", "b c"]
    count = TokenCount()
    count.add_sentence_transformer(minilm, texts, batch_size=2)
    lengths = [len(minilm.tokenizer(t)["input_ids"]) for t in texts]
    assert count.real == sum(lengths)
    by_length = sorted(lengths, reverse=True)  # batches: the two longest, then the two shortest
    assert count.padded == 2 * by_length[0] + 2 * by_length[2]
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    count = TokenCount()
    count.add(mask)
    assert count.snapshot() == (3, 6)
