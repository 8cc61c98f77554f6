"""The quality gate's reference model (embed/reference.py): int8 runs are checked against the
fp32 ONNX graph they were quantized from, without torch; that reference still refuses a broken
int8 path; kept references are reused only by runs whose own reference they can stand for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from fashion_batch.embed import EmbedConfig, recheck, reference, run
from fashion_batch.encoders.export import prepare
from fashion_batch.errors import GateError

DATA = Path(__file__).parent.parent / "data"
QUERIES = str(DATA / "handwritten_queries.jsonl")

# A whole int8 run in a fresh interpreter; prints its gate report and which libraries it loaded.
SCRIPT = """
import json, sys
from fashion_batch.embed import EmbedConfig, run
manifest = run(EmbedConfig(input=sys.argv[1], output=sys.argv[2], backend="onnx-int8",
                           runner="local", probe_queries=sys.argv[3]))
print(json.dumps({"gate": manifest["gate"],
                  "imported": [m for m in ("torch", "sentence_transformers") if m in sys.modules]}))
"""


def test_an_int8_run_is_checked_against_the_fp32_export_without_importing_torch(
    tmp_path, minilm_dir
):
    rows = [json.loads(line) for line in (DATA / "handwritten_listings.jsonl").open()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "catalog.parquet")
    prepare(minilm_dir, "onnx-int8")  # a node's cached export, as after its first int8 run
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "out"
    argv = [str(tmp_path / "catalog.parquet"), str(out), QUERIES]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] == []
    parity = result["gate"]["parity"]
    assert parity["kind"] == reference.EXPORT and parity["rows"] > 0
    assert 0.99 < parity["min_cos"] < 0.99999  # int8 against fp32: close, not identical
    assert result["gate"]["probe"]["queries"] > 0
    kept = pq.read_table(out / recheck.REFERENCES)
    assert recheck.kind(kept) == reference.EXPORT


def test_the_export_reference_refuses_a_broken_int8_path(dirty_catalog, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("FASHION_BATCH_FAULT_VECTOR_NOISE", "0.5")
    config = EmbedConfig(
        input=str(dirty_catalog), output=str(tmp_path / "out"), backend="onnx-int8", runner="local"
    )
    with pytest.raises(GateError, match="parity_min_cos"):
        run(config)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize(
    "kept_kind, backend, reused",
    [
        (reference.TORCH, "auto", True),
        (reference.TORCH, "onnx-int8", True),  # the stronger reference stands for int8's
        (reference.EXPORT, "onnx-int8", True),
        (reference.EXPORT, "auto", False),  # fp32 ONNX runs are checked against torch
        (reference.EXPORT, "torch", False),
        (None, "auto", True),  # kept by a build that recorded no kind: torch
    ],
)
def test_kept_references_stand_only_for_runs_that_accept_their_kind(
    tmp_path, kept_kind, backend, reused
):
    fs = pafs.LocalFileSystem()
    (tmp_path / "report").mkdir()
    keys = {"id": pa.array([1, 2]), "content_hash": pa.array(["a", "b"])}
    vectors = np.ones((2, 4), np.float32)
    recheck.write_references(fs, str(tmp_path), keys, vectors, "sha", kept_kind or "x")
    if kept_kind is None:  # as an older build wrote it: the model digest only
        path = tmp_path / recheck.REFERENCES
        table = pq.read_table(path)
        table = table.replace_schema_metadata({recheck.MODEL_KEY: b"sha"})
        pq.write_table(table, path)
    previous = SimpleNamespace(
        fs=fs, path=str(tmp_path), uri=str(tmp_path), manifest={"model": {"sha256": "sha"}}
    )
    got = recheck.read_references(previous, EmbedConfig(input="i", output="o", backend=backend))
    assert (got is not None) == reused
