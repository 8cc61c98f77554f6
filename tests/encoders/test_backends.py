"""ONNX backends (fashion_batch.encoders) against the torch encoder they replace.

One export per module, into a private cache dir; the texts are 300 listings of the synthetic
catalog (clean and dirty rows, as the job renders them)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from fashion_batch.embed import EmbedConfig, run
from fashion_batch.encoders import sensitivity
from fashion_batch.encoders.cuda import CudaEncoder
from fashion_batch.encoders.export import CHECK_TEXTS, FP32_TOLERANCE, PROBE_TEXTS, prepare
from fashion_batch.encoders.int8 import (
    OUTLIER_CHANNELS,
    channel_peaks,
    split_outliers,
    weight_matmuls,
)
from fashion_batch.encoders.load import load_encoder
from fashion_batch.encoders.models import Encoder, build_seed_model, load_model
from fashion_batch.encoders.onnx import FastTokenizer, OnnxEncoder, _HFTokenizer
from fashion_batch.encoders.registry import CPU_BATCH_SIZE
from fashion_batch.sample_data import SampleDataConfig
from fashion_batch.sample_data import run as sample_run
from fashion_batch.text import Template


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("fb-cache")
    mp.setenv("FASHION_BATCH_CACHE", str(d))
    yield d
    mp.undo()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    sample_run(SampleDataConfig(output=str(out), listings=300, seed=0, files=2))
    return out / "catalog"


@pytest.fixture(scope="module")
def texts(sample):
    table = pads.dataset(str(sample)).to_table()
    template = Template("{title}. {description}")
    rendered = template.render_columns(table.select(template.columns).to_pydict(), len(table))
    out = [t for t in rendered if t]
    assert len(out) >= 250
    return out


@pytest.fixture(scope="module")
def exported(cache, minilm_dir):
    return prepare(minilm_dir, "onnx-int8")


@pytest.fixture(scope="module")
def reference(texts):
    return Encoder(load_model("builtin:minilm", "cpu", "fp32"), batch_size=64).encode(texts)


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_export_is_cached_by_model_digest(exported, cache, minilm_dir):
    assert exported.parent.parent == cache
    assert (exported / "model.onnx").exists() and (exported / "model-int8.onnx").exists()
    assert prepare(minilm_dir, "onnx") == exported  # second call: cache hit
    assert prepare(minilm_dir, "torch") is None
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    "name, backend",
    [("model-int8.onnx", "onnx-int8"), ("model.onnx", "onnx"), ("model-fused.onnx", "onnx")],
)
def test_a_damaged_cached_graph_is_rebuilt_not_used(
    name, backend, exported, minilm_dir, tmp_path, monkeypatch, caplog
):
    """A cached graph whose bytes differ from the sha256 recorded when it was made (a torn copy,
    a disk error, a hand edit) is rebuilt with a warning naming it, never run as it is."""
    import hashlib
    import logging
    import shutil

    monkeypatch.setenv("FASHION_BATCH_CACHE", str(tmp_path))
    copy = tmp_path / "onnx" / exported.name
    shutil.copytree(exported, copy)
    damaged = bytearray((copy / name).read_bytes())
    damaged[-1] ^= 1
    (copy / name).write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="fashion_batch.encoders.export"):
        assert prepare(minilm_dir, backend) == copy
    rebuilt = hashlib.sha256((copy / name).read_bytes()).hexdigest()
    assert rebuilt != hashlib.sha256(damaged).hexdigest()
    assert name in caplog.text
    int8 = backend == "onnx-int8"
    texts = ["Vintage red silk slip dress", "boots"]
    np.testing.assert_allclose(
        OnnxEncoder(copy, int8).encode(texts), OnnxEncoder(exported, int8).encode(texts), atol=1e-6
    )


EDGE_TEXTS = [
    "word " * 400,  # past max_seq_length: truncated, not dropped
    "Crème brûlée ÉTÉ naïve façade — Ångström",  # accents (the tokenizer lowercases, strips)
    "连衣裙 ワンピース 원피스",  # CJK: split per character
    "👗👠 emoji-only?! ... ",
    " \t leading and trailing whitespace \n",
    "x",
    "Levi's 501 W32/L34 (100% cotton) £45.00 #vintage @seller",
]


@pytest.mark.parametrize("tokenizer_json", [True, False], ids=["tokenizers", "hf-fallback"])
def test_tokenization_matches_sentence_transformers(
    exported, texts, minilm, tokenizer_json, tmp_path
):
    """The actor's tokenizer (the `tokenizers` library alone, or the HF fallback for a saved
    tokenizer without tokenizer.json) gives the ids, mask and type ids ST's preprocess gives."""
    import shutil

    directory = exported
    if not tokenizer_json:
        directory = tmp_path / "export"
        shutil.copytree(exported, directory)
        (directory / "tokenizer" / "tokenizer.json").unlink()
        (directory / "tokenizer" / "vocab.txt").write_text(
            "\n".join(minilm.tokenizer.convert_ids_to_tokens(range(len(minilm.tokenizer))))
        )
    enc = OnnxEncoder(directory)
    expected_class = FastTokenizer if tokenizer_json else _HFTokenizer
    assert isinstance(enc.tokenizer, expected_class)
    for batch in (texts[:64] + EDGE_TEXTS, EDGE_TEXTS[1:], ["x"]):
        ours = enc.tokenize(batch)
        theirs = minilm.preprocess(batch)
        assert set(ours) == {"input_ids", "attention_mask", "token_type_ids"}
        for k, v in ours.items():
            assert v.dtype == np.int64
            np.testing.assert_array_equal(v, theirs[k].numpy())
    assert enc.tokenize(EDGE_TEXTS)["input_ids"].shape[1] == minilm.max_seq_length


def test_onnx_cpu_encoder_loads_without_torch(exported, cache):
    """An ONNX actor on CPU imports neither torch nor transformers (~5 s of its start-up)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from fashion_batch.encoders.load import load_encoder\n"
        "from fashion_batch.encoders.onnx import OnnxEncoder\n"
        "enc = load_encoder('builtin:minilm', 'onnx-int8', 'cpu')\n"
        "assert isinstance(enc, OnnxEncoder), type(enc)\n"
        "assert enc.encode(['red silk dress']).shape == (1, enc.dim)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_onnx_fp32_matches_torch(exported, texts, reference):
    got = OnnxEncoder(exported, int8=False, batch_size=32, threads=2).encode(texts)
    assert got.shape == reference.shape and got.dtype == np.float32
    assert float(np.abs(got - reference).max()) < 1e-4


def test_the_unfused_graph_the_gate_checks_int8_against_matches_torch(exported, texts, reference):
    """embed/reference.py: int8 runs are checked against this graph. Its export was checked
    on a text past max_seq_length too, and the difference is on record."""
    got = OnnxEncoder(exported, int8=False, threads=2, fused=False).encode(texts)
    assert float(np.abs(got - reference).max()) < 1e-4
    meta = json.loads((exported / "meta.json").read_text())
    assert (
        max(meta["torch_max_abs_diff"][g] for g in ("model.onnx", "model-fused.onnx"))
        <= FP32_TOLERANCE
    )
    untruncated = FastTokenizer(exported / "tokenizer", 10**6).lengths(CHECK_TEXTS)
    assert untruncated.max() > meta["max_seq_length"]


def test_onnx_fp32_runs_the_fused_graph(exported, minilm):
    """`--backend onnx` runs ORT's fused transformer graph (one Attention op per layer, the skip
    LayerNorms and bias+GELU fused), checked against torch on texts the export never probed:
    the edge cases (a text past max_seq_length among them) at two batch sizes."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(exported / "model-fused.onnx")).graph.node]
    assert ops.count("Attention") == 6 and ops.count("SkipLayerNormalization") == 12
    ref = Encoder(minilm, batch_size=4).encode(EDGE_TEXTS)
    for batch_size in (1, 16):
        enc = OnnxEncoder(exported, int8=False, batch_size=batch_size)
        assert enc.session._model_path.endswith("model-fused.onnx")
        assert float(np.abs(enc.encode(EDGE_TEXTS) - ref).max()) < 1e-4


@pytest.mark.parametrize("batch_size", [CPU_BATCH_SIZE, 64])
def test_onnx_int8_min_cosine_to_fp32_torch(exported, texts, reference, batch_size):
    """Dynamic int8 scales activations per batch, so a row's result depends a little on its
    batch-mates: checked at the job's CPU default and at a larger batch."""
    got = OnnxEncoder(exported, int8=True, batch_size=batch_size, threads=2).encode(texts)
    assert got.shape == reference.shape
    cos = _cosines(got, reference)
    assert cos.min() >= 0.99, f"min {cos.min():.4f} mean {cos.mean():.4f}"
    assert cos.mean() >= 0.995
    # and it is a different graph: of the 6 layers x 6 MatMuls (Q, K, V, attention out, FFN up
    # and down) all but the one kept fp32 (test below) run in int8, each beside a small fp32
    # MatMul over its input's outlier channels
    import onnx

    ops = [n.op_type for n in onnx.load(str(exported / "model-int8.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 35
    assert ops.count("MatMul") == 36 + 12 + 1  # outlier parts, attention's two per layer, kept
    assert ops.count("DynamicQuantizeLinear") >= 6


LAYER0_FFN_DOWN = "/st/st.0/encoder/layer.0/output/dense/MatMul"


def test_int8_keeps_the_matmul_it_hurts_most_fp32(exported):
    """MiniLM's layer-0 FFN down-projection carries most of int8's error on the check texts
    (measured at export, not named in code): it stays a plain fp32 MatMul in the int8 graph, the
    measurement is kept in meta.json, and keeping it fp32 lowers the measured error."""
    import onnx

    measured = json.loads((exported / "meta.json").read_text())["int8"]
    assert measured["fp32_matmuls"] == [LAYER0_FFN_DOWN]
    assert measured["largest_share"][LAYER0_FFN_DOWN] >= sensitivity.SHARE
    assert 0 < measured["kept_error"] < measured["int8_error"]
    nodes = {n.name: n.op_type for n in onnx.load(str(exported / "model-int8.onnx")).graph.node}
    assert nodes[LAYER0_FFN_DOWN] == "MatMul"


def test_simulated_int8_errs_as_much_as_the_int8_graph(exported, texts):
    """The graph sensitivity.keep_fp32 measures on: with every MatMul exact it is the fp32
    graph; with the MatMuls rounded as in model-int8.onnx its error to fp32 is the int8 graph's.
    Not bit for bit: float noise of 1e-6 upstream flips an activation's rounding downstream, so
    the two are two draws of the same rounding error, compared by their size."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(exported / "model.onnx"))
    enc = OnnxEncoder(exported, int8=False, fused=False)
    kept = split_outliers(model, channel_peaks(model, enc.tokenize(PROBE_TEXTS)), OUTLIER_CHANNELS)
    names = [n.name for n in weight_matmuls(model) if n.name not in kept]
    sim = ort.InferenceSession(
        sensitivity.simulated(model, names).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    feeds = enc.tokenize(texts[:32])
    fp32 = enc.session.run(None, feeds)[0]
    exact = sim.run(None, {**feeds, sensitivity.KEEP_INPUT: np.ones(len(names), bool)})[0]
    np.testing.assert_allclose(exact, fp32, atol=1e-5)
    keep = np.array([n == LAYER0_FFN_DOWN for n in names])
    rounded = sim.run(None, {**feeds, sensitivity.KEEP_INPUT: keep})[0]
    int8 = OnnxEncoder(exported, int8=True).session.run(None, feeds)[0]
    simulated_error = float(np.mean(1 - _cosines(rounded, fp32)))
    int8_error = float(np.mean(1 - _cosines(int8, fp32)))
    assert 0.5 < simulated_error / int8_error < 2, (simulated_error, int8_error)


def test_outlier_split_alone_is_exact(exported, texts):
    """split_outliers only rearranges fp32 math: before quantization, same embeddings."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(exported / "model.onnx"))
    enc = OnnxEncoder(exported, int8=False, batch_size=32)
    peaks = channel_peaks(model, enc.tokenize(PROBE_TEXTS))
    assert len(peaks) == 6 * 4  # per layer: Q/K/V's shared input, attention out, FFN up, down
    kept = split_outliers(model, peaks, OUTLIER_CHANNELS)
    assert len(kept) == 36
    enc.session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    want = OnnxEncoder(exported, int8=False, batch_size=32).encode(texts[:64])
    np.testing.assert_allclose(enc.encode(texts[:64]), want, atol=1e-5)
    # the channels split off are the big ones: MiniLM's LayerNorm channel 99 among them
    assert all(99 in np.argsort(-p)[:4] for name, p in peaks.items() if "LayerNorm" in name)


def test_batches_are_cut_by_token_length_not_characters(exported):
    """Sorted by characters, these four would pair a 6-token text with a 12- or 13-token one in
    each batch of two (50 padded tokens for 37 real); sorted by tokens, the long pair and the
    short pair batch together (38 padded). The vectors come back in input order either way."""
    texts = [
        "cardigan sweater dress",  # 22 characters, 6 tokens with [CLS] and [SEP]
        "a b c d e f g h i j k",  # 21, 13
        "cardigan sweater coat",  # 21, 6
        "a b c d e f g h i j",  # 19, 12
    ]
    enc = OnnxEncoder(exported, int8=False, batch_size=2)
    assert enc.tokenizer.lengths(texts).tolist() == [6, 13, 6, 12]
    got = enc.encode(texts)
    assert enc.token_count.snapshot() == (37, 38)
    alone = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(got, alone, atol=1e-5)


def test_int8_batches_run_side_by_side_give_the_one_session_vectors(exported, texts):
    """With threads=3, int8 runs three single-thread sessions, each taking whole batches: the
    vectors (which depend on each batch's rows, int8 scaling activations per batch), their
    order and the token count are those of one session running every batch in turn."""
    one = OnnxEncoder(exported, int8=True, batch_size=8, threads=1)
    many = OnnxEncoder(exported, int8=True, batch_size=8, threads=3)
    assert len(many.sessions) == 3 and not one.sessions
    np.testing.assert_allclose(many.encode(texts), one.encode(texts), atol=1e-6)
    assert many.token_count.snapshot() == one.token_count.snapshot()


def test_normalize_and_empty_input(exported, texts):
    enc = OnnxEncoder(exported, normalize=True)
    assert enc.encode([]).shape == (0, 384)
    got = enc.encode(texts[:10])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_seed_head_on_tiny_distilbert_exports_dense(cache, tiny_distilbert_dir, tmp_path, texts):
    """The seed architecture (DistilBERT → mean → Dense 768, no Normalize) through ONNX."""
    model = build_seed_model(tiny_distilbert_dir)
    model.save(str(tmp_path / "seed"), safe_serialization=True)
    d = prepare(str(tmp_path / "seed"), "onnx-int8")
    assert d is not None and (d / "model-fused.onnx").exists()  # DistilBERT fuses too
    ref = Encoder(load_model(str(tmp_path / "seed"), "cpu", "fp32")).encode(texts[:50])
    got = OnnxEncoder(d).encode(texts[:50])
    assert got.shape == ref.shape == (50, 768)
    assert float(np.abs(got - ref).max()) < 1e-4
    int8 = OnnxEncoder(d, int8=True).encode(texts[:50])
    assert int8.shape == (50, 768)


def test_unsupported_head_falls_back_to_torch(cache, tmp_path, minilm_dir, caplog):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dropout

    st = SentenceTransformer(minilm_dir, device="cpu")
    odd = SentenceTransformer(modules=[*st, Dropout(0.1)])
    odd.save(str(tmp_path / "odd"), safe_serialization=True)
    assert prepare(str(tmp_path / "odd"), "onnx") is None
    assert "Dropout" in caplog.text
    enc = load_encoder(str(tmp_path / "odd"), "onnx", "cpu")
    assert isinstance(enc, Encoder)


def test_embed_job_with_onnx_int8(cache, exported, sample, tmp_path, ray_cluster):
    """The whole job through Ray with --backend onnx-int8: same ids and shapes as torch, every
    vector within cosine 0.99 of the torch job's."""
    outs = {}
    for backend in ("torch", "onnx-int8"):
        manifest = run(
            EmbedConfig(
                input=str(sample),
                output=str(tmp_path / backend),
                backend=backend,
                rows_per_unit=128,
            )
        )
        assert manifest["backend"] == backend
        parts = sorted((tmp_path / backend).glob("part-*.parquet"))
        t = pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("listing_id")
        outs[backend] = (
            t.column("listing_id").to_pylist(),
            np.stack(t.column("embedding").to_numpy(zero_copy_only=False)),
        )
    (ids_t, vec_t), (ids_q, vec_q) = outs["torch"], outs["onnx-int8"]
    assert ids_t == ids_q
    assert vec_t.shape == vec_q.shape
    assert _cosines(vec_t, vec_q).min() >= 0.99


def test_backend_flag_is_validated():
    from fashion_batch.errors import InputError

    with pytest.raises(InputError, match="--backend"):
        EmbedConfig(input="x", output="y", backend="tensorrt")


@pytest.mark.parametrize(
    "cuda, precision, runs",
    [
        (False, "auto", "onnx"),
        (False, "fp32", "onnx"),
        (False, "bf16", "torch"),  # ONNX Runtime's CPU graph is fp32 only
        (True, "auto", "torch"),  # a GPU actor: torch in fp16
        (True, "fp32", "torch"),
    ],
)
def test_auto_backend_is_fused_onnx_on_cpu_and_torch_on_gpu(cuda, precision, runs):
    from fashion_batch.encoders.registry import resolve

    assert resolve("auto", cuda, precision) == runs
    assert resolve("onnx-int8", cuda, precision) == "onnx-int8"  # an explicit choice stays


def test_auto_backend_on_cpu_loads_the_fused_graph(exported, minilm_dir, texts, reference):
    """What a CPU actor of a default run gets: the fused fp32 graph, within 1e-4 of torch."""
    from fashion_batch.encoders.load import load_encoder

    enc = load_encoder(minilm_dir, "auto", "cpu", batch_size=16, threads=1)
    assert isinstance(enc, OnnxEncoder) and enc.session._model_path.endswith("model-fused.onnx")
    assert float(np.abs(enc.encode(texts[:100]) - reference[:100]).max()) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_encoder_matches_fp32(precision, texts, reference):
    """CudaEncoder (sorted batches, pinned memory, SDPA, overlapped tokenization) in half
    precision keeps input order and stays within cosine 0.999 of fp32 on the CPU."""
    import torch

    assert torch.cuda.is_available()
    enc = load_encoder("builtin:minilm", "torch", "cuda", precision, batch_size=32)
    assert isinstance(enc, CudaEncoder)
    got = enc.encode(texts)
    assert got.shape == reference.shape and got.dtype == np.float32
    assert _cosines(got, reference).min() >= 0.999
    onnx_on_gpu = load_encoder("builtin:minilm", "onnx-int8", "cuda", precision)
    assert isinstance(onnx_on_gpu, CudaEncoder)  # ORT here is CPU-only: torch on GPU
