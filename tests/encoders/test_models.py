import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_batch.encoders.models import (
    Encoder,
    ModelError,
    build_seed_model,
    load_model,
    resolve_model,
    torch_dtype,
)
from fashion_batch.encoders.trust import check_safetensors_only, model_digest


def test_builtin_minilm_resolves_to_a_local_sentence_transformers_dir(minilm_dir):
    assert resolve_model("builtin:minilm") == minilm_dir
    assert len(model_digest(minilm_dir)) == 64


@pytest.mark.parametrize(
    "model, message",
    [
        ("builtin:nope", "unknown builtin"),
        ("/no/such/dir", "no such directory"),
        ("sentence-transformers/not-a-real-model-xyz", "cannot fetch from the hub"),
    ],
)
def test_bad_models_fail_with_a_clear_message(model, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(model)


def test_directory_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not a sentence-transformers model"):
        resolve_model(str(tmp_path))


def test_pickled_only_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="safetensors required"):
        load_model(str(tmp_path), "cpu")


def test_precision_rules():
    assert torch_dtype("auto", "cpu") is torch.float32
    assert torch_dtype("auto", "cuda") is torch.float16
    assert torch_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        torch_dtype("fp16", "cpu")
    with pytest.raises(ValueError):
        torch_dtype("int4", "cpu")


def test_encoder_matches_sentence_transformers(minilm):
    texts = ["Zara black pleated pants", "Vintage Levi's 501", ""]
    enc = Encoder(load_model("builtin:minilm", "cpu"), batch_size=2)
    out = enc.encode(texts)
    assert out.dtype == np.float32 and out.shape == (3, 384)
    np.testing.assert_allclose(out, minilm.encode(texts), atol=1e-5)
    assert enc.encode([]).shape == (0, 384)


def test_encoder_normalize_gives_unit_vectors():
    enc = Encoder(load_model("builtin:minilm", "cpu"), normalize=True)
    norms = np.linalg.norm(enc.encode(["a red dress", "boots"]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def _assert_seed_head(model, in_dim):
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling

    pooling, dense = model[1], model[2]
    assert isinstance(pooling, Pooling) and isinstance(dense, Dense)
    assert dense.linear.in_features == in_dim and dense.linear.out_features == 768
    assert dense.linear.bias is None
    assert isinstance(dense.activation_function, torch.nn.Identity)
    assert model.get_embedding_dimension() == 768


def test_seed_architecture_on_tiny_distilbert(tiny_distilbert_dir, tmp_path):
    model = build_seed_model(tiny_distilbert_dir)
    assert type(model[0].auto_model).__name__ == "DistilBertModel"
    assert model.max_seq_length == 512
    _assert_seed_head(model, 32)
    # Saved and reloaded as a plain sentence-transformers dir, safetensors only.
    model.save(str(tmp_path / "m"))
    assert not list((tmp_path / "m").rglob("*.bin"))
    reloaded = load_model(str(tmp_path / "m"), "cpu")
    _assert_seed_head(reloaded, 32)
    texts = ["a" * 5000, "short"]  # longer than 512 tokens: truncated, not dropped
    np.testing.assert_allclose(reloaded.encode(texts), model.encode(texts), atol=1e-5)


def test_seed_architecture_on_minilm_emits_768():
    model = build_seed_model("builtin:minilm")
    _assert_seed_head(model, 384)
    assert model.encode(["x"]).shape == (1, 768)


# ------------------------------------------------------------------ model trust (issue 14)


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory) -> Path:
    """builtin:minilm plus the seed head (Dense 384→768), saved as `train` saves: safetensors."""
    d = tmp_path_factory.mktemp("seed") / "model"
    build_seed_model("builtin:minilm").save(str(d), safe_serialization=True)
    return d


def _clone(source: str | Path, dest: Path) -> Path:
    """A copy of a model dir; weight files are symlinks to the originals (read-only here: edit
    them through `_write`, which replaces the link)."""

    def copy(src, dst):
        if src.endswith(".safetensors"):
            os.symlink(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=copy)
    return dest


def _write(path: Path, data: bytes) -> None:
    path.unlink()  # never write through a symlink into the original model
    path.write_bytes(data)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # the last tensor's last byte: a different weight, a valid file
    _write(path, bytes(data))


def _edit_json(path: Path, edit) -> None:
    value = json.loads(path.read_text())
    edit(value)
    _write(path, json.dumps(value).encode())


def _swap_vocab_lines(path: Path) -> None:
    lines = path.read_text().splitlines()
    lines[1000], lines[1001] = lines[1001], lines[1000]
    _write(path, "\n".join(lines).encode())


# (base model, file, edit): each changes what the model computes, so each must change the digest.
VECTOR_CHANGES = {
    "transformer weights": ("minilm", "model.safetensors", _flip_last_byte),
    "dense weights": ("seed", "2_Dense/model.safetensors", _flip_last_byte),
    "modules.json": ("minilm", "modules.json", lambda m: m.pop()),  # drop Normalize
    "pooling mode": (
        "minilm",
        "1_Pooling/config.json",
        lambda c: c.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True),
    ),
    "dense config": (
        "seed",
        "2_Dense/config.json",
        lambda c: c.update(activation_function="torch.nn.modules.activation.Tanh"),
    ),
    "max_seq_length": (
        "minilm",
        "sentence_bert_config.json",
        lambda c: c.update(max_seq_length=64),
    ),
    "vocab.txt": ("minilm", "vocab.txt", _swap_vocab_lines),
    "tokenizer.json": (
        "minilm",
        "tokenizer.json",
        lambda t: t["normalizer"].update(lowercase=False),
    ),
    "tokenizer_config.json": (
        "minilm",
        "tokenizer_config.json",
        lambda t: t.update(do_lower_case=False),
    ),
    "special_tokens_map.json": (
        "minilm",
        "special_tokens_map.json",
        lambda t: t.update(pad_token="[UNK]"),
    ),
    "config.json": ("minilm", "config.json", lambda c: c.update(layer_norm_eps=1e-6)),
    "prompts": (
        "seed",
        "config_sentence_transformers.json",
        lambda c: c.update(prompts={"query": "query: "}, default_prompt_name="query"),
    ),
}


@pytest.mark.parametrize("change", VECTOR_CHANGES, ids=list(VECTOR_CHANGES))
def test_model_digest_changes_with_everything_that_changes_vectors(
    change, minilm_dir, seed_dir, tmp_path
):
    base, name, edit = VECTOR_CHANGES[change]
    model = _clone({"minilm": minilm_dir, "seed": seed_dir}[base], tmp_path / "model")
    before = model_digest(str(model))
    path = model / name
    if name.endswith(".json"):
        _edit_json(path, edit)
    else:
        edit(path)
    assert model_digest(str(model)) != before


def test_model_digest_ignores_documentation(minilm_dir, seed_dir, tmp_path):
    """A copy has the digest of its original; README, the training metrics and a .git dir are
    never read by a loader, so editing them keeps the digest (a resume stays a resume)."""
    for i, source in enumerate((minilm_dir, seed_dir)):
        model = _clone(source, tmp_path / f"copy-{i}")
        digest = model_digest(str(model))
        assert digest == model_digest(str(source))
        _write(model / "README.md", b"# another model card\n")
        (model / "training_metrics.json").write_text('{"loss": []}\n')
        (model / ".git").mkdir()
        (model / ".git" / "index").write_bytes(b"\x00" * 8)
        assert model_digest(str(model)) == digest


def _plant_pickle(model: Path, name: str) -> None:
    """A real pickled state dict, as torch.save writes it (what a .bin module file is)."""
    from safetensors.torch import load_file

    torch.save(load_file(str(model / "2_Dense" / "model.safetensors")), model / name)


@pytest.mark.parametrize(
    "name",
    [
        "2_Dense/pytorch_model.bin",
        "pytorch_model.bin",
        "1_Pooling/weights.pt",
        "2_Dense/model.pth",
        "extra/state.pkl",
        "last.ckpt",
    ],
)
def test_a_pickle_weight_file_anywhere_in_the_model_dir_is_refused(name, seed_dir, tmp_path):
    model = _clone(seed_dir, tmp_path / "model")
    (model / name).parent.mkdir(exist_ok=True)
    _plant_pickle(model, name)
    with pytest.raises(ModelError, match=re.escape(name) + ".*safetensors required"):
        check_safetensors_only(str(model))


def test_a_module_with_only_pickle_weights_is_refused(seed_dir, tmp_path):
    """2_Dense without model.safetensors: sentence-transformers would unpickle its .bin."""
    model = _clone(seed_dir, tmp_path / "model")
    _plant_pickle(model, "2_Dense/pytorch_model.bin")
    (model / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"2_Dense/pytorch_model\.bin.*re-save"):
        check_safetensors_only(str(model))


def test_embed_refuses_a_model_with_a_pickle_file_before_writing(
    seed_dir, tmp_path, capsys, monkeypatch
):
    """The CLI exits 2 naming the file; the check runs in embed's plan, before Ray starts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fashion_batch.cli import main
    from fashion_batch.embed import job

    def no_ray():
        raise AssertionError("Ray started: the model was not checked before the run began")

    monkeypatch.setattr(job, "init_ray", no_ray)
    model = _clone(seed_dir, tmp_path / "model")
    _plant_pickle(model, "2_Dense/pytorch_model.bin")
    catalog = tmp_path / "in"
    catalog.mkdir()
    table = pa.table({"listing_id": [1, 2], "title": ["a dress", "boots"], "description": ["", ""]})
    pq.write_table(table, catalog / "a.parquet")
    out = tmp_path / "out"
    argv = ["embed", "--input", str(catalog), "--output", str(out), "--model", str(model)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2_Dense/pytorch_model.bin" in err and "safetensors required" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_no_model_is_ever_loaded_with_remote_code():
    import fashion_batch

    for path in Path(fashion_batch.__file__).parent.rglob("*.py"):
        for value in re.findall(r"trust_remote_code\s*=\s*([A-Za-z_]+)", path.read_text()):
            assert value == "False", f"{path}: trust_remote_code={value}"
