"""embed's quality gate on a local Ray cluster, over the hand-written catalog and its shopper
queries (tests/data): a passing run records both checks in the manifest and report/gate.json; a
too-high --min-ndcg, a model whose weights were scaled by noise (probe) and actors whose output
is corrupted (parity, through runtime/faults.py) are refused with exit 3 and no manifest; a rerun
with looser thresholds publishes the committed parts without re-embedding them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.cli import main
from fashion_batch.embed import EmbedConfig, run
from fashion_batch.embed.gate import GATE_REPORT
from fashion_batch.errors import InputError
from fashion_batch.evaluate.job import EvaluateConfig, run_stored

DATA = Path(__file__).parent.parent / "data"
QUERIES = str(DATA / "handwritten_queries.jsonl")


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gate-shop")
    rows = [json.loads(line) for line in (DATA / "handwritten_listings.jsonl").open()]
    (d / "catalog").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), d / "catalog" / "listings.parquet")
    return d


@pytest.fixture(scope="module")
def noisy_model(shop, minilm_dir) -> str:
    """MiniLM with every weight matrix but the embeddings scaled by (1 + N(0, 1)) noise: still a
    loadable model that every backend runs faithfully, but whose rankings are poor."""
    import torch
    from safetensors.torch import load_file, save_file

    d = shop / "noisy-minilm"
    shutil.copytree(minilm_dir, d)
    weights = load_file(d / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for name, w in weights.items():
        if w.ndim == 2 and "embeddings" not in name:
            weights[name] = w * (1 + torch.randn(w.shape, generator=g))
    save_file(weights, d / "model.safetensors")
    return str(d)


def _embed(shop: Path, out: str, *flags: str) -> int:
    argv = ["embed", "--input", str(shop / "catalog"), "--output", str(shop / out)]
    return main([*argv, "--backend", "torch", "--probe-queries", QUERIES, *flags])


def _report(out: Path) -> dict:
    return json.loads((out / GATE_REPORT).read_text())


def test_a_passing_run_records_the_gate(shop, ray_cluster):
    out = shop / "passing"
    manifest = run(
        EmbedConfig(
            input=str(shop / "catalog"),
            output=str(out),
            backend="torch",
            probe_queries=QUERIES,
            min_ndcg=0.5,
        )
    )
    gate = manifest["gate"]
    assert gate["passed"] and gate == _report(out)
    assert gate["parity"]["rows"] == 40  # every row: fewer than --parity-rows
    assert gate["parity"]["min_cos"] > 0.9999  # torch actors vs torch fp32 on the driver
    assert gate["probe"]["queries"] == 44 and gate["probe"]["ndcg@10"] > 0.5
    assert {c["name"]: c["passed"] for c in gate["checks"]} == {
        "parity_min_cos": True,
        "probe_ndcg@10": True,
    }
    # the gate scores without sentence-transformers' evaluator; `evaluate --embeddings` uses it
    stored = run_stored(EvaluateConfig(queries=QUERIES, embeddings=str(out)))
    for metric in ("ndcg@10", "recall@10", "mrr@10"):
        assert gate["probe"][metric] == pytest.approx(stored[metric], abs=1e-9)
    assert gate["probe"]["skipped_queries"] == stored["skipped_queries"]


def test_a_too_high_min_ndcg_is_refused_and_a_looser_rerun_publishes(shop, ray_cluster, capsys):
    out = shop / "strict"
    assert _embed(shop, "strict", "--min-ndcg", "0.99") == 3
    err = capsys.readouterr().err
    assert "probe_ndcg@10" in err and "< --min-ndcg 0.99 (FAILED)" in err
    assert "parity_min_cos" in err and "(ok)" in err
    assert not (out / "manifest.json").exists()
    assert (out / "_staging" / "unit-00000.parquet").exists()  # staged, for the rerun
    assert not list(out.glob("part-*.parquet"))  # nothing published
    report = _report(out)
    assert not report["passed"] and report["probe"]["ndcg@10"] < 0.99

    assert _embed(shop, "strict", "--min-ndcg", "0.5") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units"]["resumed"] == manifest["units"]["total"]  # only re-checked
    assert manifest["gate"]["passed"] and _report(out)["passed"]


def test_a_model_with_noisy_weights_is_refused_by_the_probe(shop, ray_cluster, noisy_model, capsys):
    out = shop / "noisy"
    assert _embed(shop, "noisy", "--model", noisy_model, "--min-ndcg", "0.5") == 3
    assert "probe_ndcg@10" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    report = _report(out)
    # parity cannot see a bad model (its reference runs the same weights): the probe does
    assert report["parity"]["min_cos"] > 0.9999
    assert report["probe"]["ndcg@10"] < 0.5


def test_a_corrupted_backend_is_refused_by_parity(shop, ray_cluster, monkeypatch, capsys):
    """The actors' vectors get noise (runtime/faults.py) that the driver's torch fp32 reference
    does not: a broken backend. No probe threshold is set, so parity alone refuses."""
    monkeypatch.setenv("FASHION_BATCH_FAULT_VECTOR_NOISE", "0.5")
    out = shop / "corrupted"
    assert _embed(shop, "corrupted") == 3
    err = capsys.readouterr().err
    assert "parity_min_cos" in err and "< --min-parity-cos 0.99 (FAILED)" in err
    assert not (out / "manifest.json").exists()
    report = _report(out)
    assert report["parity"]["min_cos"] < 0.99
    assert [c["name"] for c in report["checks"] if not c["passed"]] == ["parity_min_cos"]


def test_a_bad_probe_file_is_exit_2_before_anything_is_written(shop, tmp_path, capsys):
    bad = tmp_path / "probe.jsonl"
    bad.write_text('{"query": "red coat"}\n')
    out = tmp_path / "out"
    argv = ["embed", "--input", str(shop / "catalog"), "--output", str(out)]
    assert main([*argv, "--probe-queries", str(bad)]) == 2
    assert f"--probe-queries {bad}:1: needs a list field 'relevant_ids'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"min_ndcg": 0.5}, "--min-ndcg needs --probe-queries"),
        ({"min_parity_cos": 1.5}, "--min-parity-cos must be in [-1, 1]"),
        ({"parity_rows": -1}, "--parity-rows must be >= 0"),
    ],
)
def test_bad_gate_settings_are_input_errors(settings, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        EmbedConfig(input="in", output="out", **settings)


@pytest.mark.parametrize(
    ("flag", "rows_out", "expected"),
    [(None, 40, 64), (None, 8_000, 80), (None, 1_000_000, 256), (10, 8_000, 10), (0, 8_000, 0)],
)
def test_the_default_parity_sample_is_one_in_100_rows_within_64_to_256(flag, rows_out, expected):
    from types import SimpleNamespace

    from fashion_batch.embed.gate import parity_rows

    assert parity_rows(SimpleNamespace(parity_rows=flag), rows_out) == expected


def test_an_incremental_night_checks_parity_against_the_kept_references(
    shop, ray_cluster, monkeypatch, tmp_path
):
    """A --previous night embeds last night's parity rows again (embed/recheck.py) and compares
    them with the torch fp32 references last night kept, and scores the probe with the query
    vectors last night kept: the driver loads no model, and a corrupted backend is still
    refused."""
    from fashion_batch.embed import recheck, reference
    from fashion_batch.errors import GateError

    def config(out: str, previous: str | None = None) -> EmbedConfig:
        return EmbedConfig(
            input=str(shop / "catalog"),
            output=str(tmp_path / out),
            backend="torch",
            parity_rows=5,
            probe_queries=QUERIES,
            previous=str(tmp_path / previous) if previous else None,
        )

    first = run(config("night1"))
    kept = pq.read_table(tmp_path / "night1" / recheck.REFERENCES)
    assert len(kept) == 5 == first["gate"]["parity"]["rows"]
    assert kept.schema.metadata[recheck.MODEL_KEY].decode() == first["model"]["sha256"]

    def no_model(_config):
        raise AssertionError("the gate loaded the torch reference model")

    monkeypatch.setattr(reference, "load", no_model)
    second = run(config("night2", "night1"))
    parity = second["gate"]["parity"]
    assert second["incremental"]["rechecked"] == 5 == parity["rows"]
    assert "kept from an earlier night" in parity["reference"] and parity["min_cos"] > 0.9999
    assert pq.read_table(tmp_path / "night2" / recheck.REFERENCES).equals(kept)
    # the probe's query vectors were kept too: the same metrics without encoding a query
    assert second["gate"]["probe"]["ndcg@10"] == pytest.approx(first["gate"]["probe"]["ndcg@10"])
    assert second["drift"]["overlap@10"] == 1.0

    monkeypatch.setenv("FASHION_BATCH_FAULT_VECTOR_NOISE", "0.5")
    with pytest.raises(GateError, match="parity_min_cos"):
        run(config("night3", "night2"))
    assert not (tmp_path / "night3" / "manifest.json").exists()
    assert json.loads((tmp_path / "night3" / GATE_REPORT).read_text())["parity"]["min_cos"] < 0.99
