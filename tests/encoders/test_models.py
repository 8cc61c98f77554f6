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
    weights_digest,
)


def test_builtin_minilm_resolves_to_a_local_sentence_transformers_dir(minilm_dir):
    assert resolve_model("builtin:minilm") == minilm_dir
    assert len(weights_digest(minilm_dir)) == 64


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
