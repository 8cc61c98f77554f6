"""The Python API (`from fashion_batch import embed, train, ...`): what it imports, the config
forms it accepts, the typed results of real runs and the typed errors of bad settings."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fashion_batch
from fashion_batch import (
    EmbedConfig,
    EmbedResult,
    InputError,
    TrainResult,
    UserError,
    __version__,
    embed,
    train,
)


def test_import_fashion_batch_loads_neither_ray_nor_torch():
    code = (
        "import sys; from fashion_batch import embed, train, EmbedConfig, TrainConfig, "
        "__version__; print(sorted(m for m in ('ray', 'torch', 'sentence_transformers', "
        "'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_embed_and_train_are_the_functions_whatever_was_imported_before():
    from fashion_batch.embed import layout  # noqa: F401 - a job module, imported after the API
    from fashion_batch.train import data  # noqa: F401

    assert fashion_batch.embed is embed and fashion_batch.train is train
    assert embed.__module__ == train.__module__ == "fashion_batch.api"
    assert __version__ == fashion_batch.__version__ != ""


def test_bad_settings_raise_input_errors_naming_them_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    cases = [
        (dict(batch_size="64"), r"batch_size = '64' must be an integer"),
        (dict(batchsize=64), r"unknown key 'batchsize'.*did you mean 'batch_size'"),
        (dict(precision="fp8"), r"precision = 'fp8' must be one of auto\|fp32"),
        (dict(normalize=1), r"normalize = 1 must be true or false"),
    ]
    for settings, message in cases:
        with pytest.raises(InputError, match=message):
            embed(input=str(tmp_path), output=str(out), **settings)
    with pytest.raises(InputError, match=r"missing required setting\(s\): input \(--input\)"):
        embed(output=str(out))
    with pytest.raises(UserError, match="nowhere"):  # a missing input, found before any write
        embed(input=str(tmp_path / "nowhere"), output=str(out))
    assert not out.exists()


def test_a_config_and_settings_on_top_are_refused(tmp_path):
    config = EmbedConfig(input="in", output="out")
    with pytest.raises(TypeError, match="not both"):
        embed(config, normalize=True)
    with pytest.raises(TypeError, match="TOML path"):
        embed(42)


def test_train_refuses_bad_input_with_the_cli_s_error(tmp_path):
    pq.write_table(pa.table({"anchor": ["a"], "positive": ["p"]}), tmp_path / "pairs.parquet")
    with pytest.raises(InputError, match="missing column 'negative'"):
        train(
            {"triplets": str(tmp_path / "pairs.parquet"), "output": str(tmp_path / "m")},
            base_model="builtin:minilm",
        )
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------- real runs (Ray)


def test_the_docs_example_runs_as_written(ray_cluster, tmp_path, capsys):
    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert "/tmp/fashion-demo" in code
    exec(compile(code.replace("/tmp/fashion-demo", str(tmp_path)), "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"^\d+ of 200 listings embedded, [1-9]\d* quarantined \{", out, re.M), out
    assert f"384-d vectors by builtin:minilm in {tmp_path}/emb/manifest.json" in out


def test_embed_from_a_toml_file_returns_the_manifest_as_a_result(
    ray_cluster, dirty_catalog, tmp_path
):
    out = tmp_path / "emb"
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{dirty_catalog}"\noutput = "elsewhere"\nnum_actors = 1\n')
    result = embed(job, output=str(out))  # the keyword argument wins over the file

    assert isinstance(result, EmbedResult)
    manifest = json.loads((out / "manifest.json").read_text())
    assert result.manifest == manifest and result.manifest_path == str(out / "manifest.json")
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (10, 6, 4)
    assert result.quarantine_reasons["duplicate_id"] == 1
    assert result.dim == 384 and result.model == "builtin:minilm" and result.output == str(out)
    assert result.files == tuple(manifest["files"]) and result.stage_seconds
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.rows_out = 0

    # The same settings as a config object: the finished output is returned, not redone.
    again = embed(EmbedConfig(input=str(dirty_catalog), output=str(out), num_actors=1))
    assert again == result


def _triplets(path: Path) -> str:
    colours = ["red", "blue", "black", "white", "green", "pink", "beige", "navy"]
    items = ["coat", "jeans", "sneakers", "dress"]
    rows = [
        (f"{c} {i}", f"{i} in {c}, size M", f"{items[(n + 1) % 4]} in {colours[(m + 3) % 8]}")
        for (m, c), (n, i) in itertools.product(enumerate(colours), enumerate(items))
    ]
    columns = zip(("anchor", "positive", "negative"), zip(*rows, strict=True), strict=True)
    pq.write_table(pa.table(dict(columns)), path)
    return str(path)


def test_train_returns_the_published_model_and_its_metrics(
    ray_cluster, tiny_distilbert_dir, tmp_path
):
    settings = {
        "triplets": _triplets(tmp_path / "train.parquet"),
        "base_model": tiny_distilbert_dir,
        "num_workers": 1,
        "epochs": 1,
        "max_seq_length": 16,
        "eval_split": 0.0,
    }
    result = train(settings, output=str(tmp_path / "model"))

    assert isinstance(result, TrainResult)
    assert result.output == str(tmp_path / "model")
    assert result.metrics == json.loads(Path(result.metrics_path).read_text())
    assert result.metrics["epochs"] == 1 and result.metrics["steps"] >= 1
    assert (Path(result.output) / "model.safetensors").is_file()
