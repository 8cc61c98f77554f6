"""ONNX Runtime backends for CPU actors: `--backend onnx` (fp32) and `--backend onnx-int8`.

Why: on CPU the torch eager forward of a small encoder leaves speed on the table; the same graph
run by ONNX Runtime is faster with identical output, and int8 weights are faster again.

How (design.md pitfall: `optimum[onnxruntime]` downgrades transformers, so no optimum):

* `torch.onnx.export` of the *whole* sentence-transformers forward — Transformer → Pooling →
  Dense → Normalize, whatever of those the model has — so pooling, the seed's Dense head and
  normalization are the very ops sentence-transformers runs, not a re-implementation. Only those
  four module types are exported (`supported_modules`); any other head makes `prepare` return
  None and the job runs the torch backend, with a warning saying so.
* Every export is checked against torch on probe texts (max abs diff ≤ 1e-4) before it is cached.
* The export is cached under `$FASHION_BATCH_CACHE` (default `~/.cache/fashion-batch`) in a dir
  keyed by the model's weights digest and the export recipe, written atomically (tmp dir +
  rename), so concurrent actors on one node never see half a file and a re-trained model never
  reuses a stale graph. The tokenizer and max_seq_length are saved beside it: an ONNX actor loads
  neither torch weights nor sentence-transformers.
* int8 = onnxruntime dynamic quantization, done carefully (recipe v3): every MatMul with a
  constant weight, per output channel, signed int8 with 7-bit range (`reduce_range`), after
  `split_outliers` has moved each MatMul input's 4 largest channels into a small fp32 MatMul
  beside it; embeddings, LayerNorm, Softmax, GELU and the attention score MatMuls (their B is
  not a constant) stay fp32. Why 7-bit: on x86 CPUs without VNNI (AVX2 only, like the Zen 3
  EPYC of the earlier sessions) ORT's u8×s8 kernel sums pairs of products in int16
  (vpmaddubsw), which saturates with full-range weights; with 7-bit weights it cannot. Why the
  split: see split_outliers. History, min cosine to fp32 (bench rows, batch 16): naive
  `quantize_dynamic` 0.885 (300 listings); v2 (7-bit, FFN down-projections left fp32 because
  of their outlier inputs) 0.9906-0.9916, 1.5x fp32's rows per CPU-second; the same with the
  FFN down-projections int8 too, 1.4x faster again but min 0.981; v3 0.9947 (mean 0.9972) and
  +19-24% rows per CPU-second over v2 single-threaded (an EPYC with AVX-512 VNNI; README
  Performance). tests/encoders/test_backends.py asserts min ≥ 0.99 on 300 listings, at batch 16 (the CPU
  default) and 64: dynamic int8 scales activations per batch, so a row's result depends a
  little on its batch-mates, and smaller batches are the more accurate.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from fashion_batch.encoders.registry import BACKENDS, CPU_BATCH_SIZE, GPU_BATCH_SIZE

log = logging.getLogger(__name__)

# Bump when the export or quantization recipe changes: old cache entries are then ignored.
RECIPE = "v3"  # v2: 7-bit weights (reduce_range); v3: + outlier channels split off in fp32
OUTLIER_CHANNELS = 4  # per MatMul input; why: split_outliers
OPSET = 17
FP32_TOLERANCE = 1e-4
SUPPORTED = ("Transformer", "Pooling", "Dense", "Normalize")
PROBE_TEXTS = [
    "Vintage red silk slip dress, size S. Worn twice, no marks; bias cut, adjustable straps.",
    "Levi's 501 jeans",
    "Nike Air Max 90 trainers in white/grey, UK 9 — box included, soles clean, laces replaced.",
    "x",
]


class BackendError(RuntimeError):
    """An export that does not reproduce the torch model (never cached)."""


def cache_root() -> Path:
    return Path(os.environ.get("FASHION_BATCH_CACHE", "~/.cache/fashion-batch")).expanduser()


def supported_modules(st) -> tuple[bool, list[str]]:
    """(all supported?, module class names) of a loaded SentenceTransformer."""
    names = [type(m).__name__ for m in st]
    return all(n in SUPPORTED for n in names), names


def cache_dir(model_dir: str) -> Path:
    from fashion_batch.encoders.models import weights_digest

    return cache_root() / "onnx" / f"{weights_digest(model_dir)[:24]}-{RECIPE}-opset{OPSET}"


def prepare(model_dir: str, backend: str) -> Path | None:
    """Make sure the ONNX graph for `backend` is cached; return the cache dir, or None when the
    model has a module the export does not cover (the caller then uses torch)."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return None
    target = cache_dir(model_dir)
    if not (target / "model.onnx").exists() and not _export(model_dir, target):
        return None
    if backend == "onnx-int8" and not (target / "model-int8.onnx").exists():
        _quantize(target)
    return target


def _export(model_dir: str, target: Path) -> bool:
    import torch

    from fashion_batch.encoders.models import load_model

    st = load_model(model_dir, "cpu", "fp32")
    ok, names = supported_modules(st)
    if not ok:
        log.warning(
            "--backend onnx exports %s modules only; this model has %s: using torch",
            SUPPORTED,
            names,
        )
        return False
    # Eager attention traces to plain MatMul/Softmax, which ORT runs and int8 quantizes; the
    # torch backend keeps SDPA (same math).
    st[0].model.set_attn_implementation("eager")
    features = st.preprocess(PROBE_TEXTS)
    input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features]
    args = tuple(features[k] for k in input_names)
    graph = _Graph(st, input_names).eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with torch.inference_mode():
            expected = graph(*args).numpy()
        axes = {k: {0: "batch", 1: "seq"} for k in input_names}
        with warnings.catch_warnings():  # tracer notes on shape checks; the probe check decides
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                args,
                str(tmp / "model.onnx"),
                input_names=input_names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter needs no onnxscript; handles HF BERTs
            )
        st.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        session = _session(tmp / "model.onnx", 1)
        used = [i.name for i in session.get_inputs()]  # the exporter drops unused inputs
        meta = {
            "input_names": used,
            "max_seq_length": int(st.max_seq_length),
            "dim": int(st.get_embedding_dimension()),
            "modules": names,
            "model_dir": model_dir,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        got = session.run(None, {k: features[k].numpy() for k in used})[0]
        err = float(np.abs(got - expected).max())
        if err > FP32_TOLERANCE:
            raise BackendError(f"ONNX export differs from torch by {err:.2e} > {FP32_TOLERANCE}")
        try:
            os.replace(tmp, target)  # atomic; another actor may have won the race: fine
        except OSError:
            if not (target / "model.onnx").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _quantize(target: Path) -> None:
    """model.onnx → model-int8.onnx: outlier channels split off in fp32 (`split_outliers`), every
    other MatMul with a constant weight dynamically quantized (7-bit per-channel weights)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(target / "model.onnx"))
    meta = json.loads((target / "meta.json").read_text())
    tokenizer = load_tokenizer(target / "tokenizer", meta["max_seq_length"])
    feeds = {k: v for k, v in tokenizer(PROBE_TEXTS).items() if k in meta["input_names"]}
    kept_fp32 = split_outliers(model, channel_peaks(model, feeds), OUTLIER_CHANNELS)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=target)
    os.close(fd)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a generic "consider pre-processing" note on root
    try:
        quantize_dynamic(
            model,
            tmp,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=True,  # 7-bit weights: no int16 saturation on non-VNNI CPUs (above)
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept_fp32,
            extra_options={"MatMulConstBOnly": True},
        )
        os.replace(tmp, target / "model-int8.onnx")
    finally:
        root.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _is_weight_matmul(node, weights) -> bool:
    """A MatMul whose B is a constant weight (what dynamic quantization turns int8)."""
    return node.op_type == "MatMul" and node.input[1] in weights


def _weight_matmuls(model) -> list:
    weights = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if _is_weight_matmul(n, weights)]


def channel_peaks(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{activation name: max |x| per channel (last axis)} of every weight MatMul's input, over
    `feeds` (the probe texts), padding positions included: the runtime quantizer sees them too."""
    import onnx
    import onnxruntime as ort

    names = list(dict.fromkeys(n.input[0] for n in _weight_matmuls(model)))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(names, feeds)
    return {
        name: np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
        for name, x in zip(names, outputs, strict=True)
    }


def split_outliers(model, peaks: dict[str, np.ndarray], k: int) -> list[str]:
    """Rewrite each weight MatMul `y = x @ W` (in place) as

        y = (x * mask) @ W   +   x[..., idx] @ W[idx]      (idx: x's k largest channels)

    and return the names of the second, fp32 MatMuls (the caller keeps them out of int8).

    Why: dynamic int8 scales a whole activation tensor by its largest value, and BERT-family
    activations have a few channels ~10x larger than the rest (MiniLM: LayerNorm channel 99 at
    ~30 against a median channel max of 2; a GELU channel per FFN layer at 14-25), so every other
    channel lost most of its resolution — why recipe v2 left the FFN down-projections in fp32.
    With those channels zeroed on the int8 path and multiplied in fp32 beside it (LLM.int8()'s
    decomposition, with the channels picked once at export on the probe texts: they are a
    property of the weights, not of the input), all 36 MatMuls of MiniLM's encoder run int8.
    The rewrite alone is exact (tests/encoders/test_backends.py); the MatMul keeps its name, so the
    quantized graph's node names stay what they were. One mask and one gather per activation,
    shared by the MatMuls reading it (Q, K and V).
    """
    from onnx import helper, numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    split: dict[str, tuple[str, str, np.ndarray]] = {}  # activation -> (masked, outliers, idx)
    kept_fp32 = []
    out: list = []
    for node in list(model.graph.node):
        if not _is_weight_matmul(node, weights) or node.input[0] not in peaks:
            out.append(node)
            continue
        x = node.input[0]
        if x not in split:
            idx = np.sort(np.argsort(-peaks[x], kind="stable")[:k]).astype(np.int64)
            mask = np.ones(len(peaks[x]), dtype=np.float32)
            mask[idx] = 0.0
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(mask, f"{x}/outlier_mask"),
                    numpy_helper.from_array(idx, f"{x}/outlier_idx"),
                ]
            )
            out.append(
                helper.make_node(
                    "Mul", [x, f"{x}/outlier_mask"], [f"{x}/masked"], name=f"{x}/MaskOutliers"
                )
            )
            out.append(
                helper.make_node(
                    "Gather",
                    [x, f"{x}/outlier_idx"],
                    [f"{x}/outliers"],
                    axis=-1,
                    name=f"{x}/GatherOutliers",
                )
            )
            split[x] = (f"{x}/masked", f"{x}/outliers", idx)
        masked, outliers, idx = split[x]
        w = numpy_helper.to_array(weights[node.input[1]])
        prefix = node.name or node.output[0]
        model.graph.initializer.append(numpy_helper.from_array(w[idx], f"{prefix}/outlier_W"))
        out.append(
            helper.make_node(
                "MatMul", [masked, node.input[1]], [f"{prefix}/int8_part"], name=node.name
            )
        )
        out.append(
            helper.make_node(
                "MatMul",
                [outliers, f"{prefix}/outlier_W"],
                [f"{prefix}/fp32_part"],
                name=f"{prefix}/OutlierMatMul",
            )
        )
        out.append(
            helper.make_node(
                "Add",
                [f"{prefix}/int8_part", f"{prefix}/fp32_part"],
                [node.output[0]],
                name=f"{prefix}/AddOutliers",
            )
        )
        kept_fp32.append(f"{prefix}/OutlierMatMul")
    del model.graph.node[:]
    model.graph.node.extend(out)
    return kept_fp32


class _Graph:
    """nn.Module wrapper: positional tensors in, the ST pipeline's `sentence_embedding` out."""

    def __new__(cls, st, input_names):
        import torch

        class Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.st = st

            def forward(self, *tensors):
                features = dict(zip(input_names, tensors, strict=True))
                return self.st({**features, "modality": "text"})["sentence_embedding"]

        return Graph()


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class FastTokenizer:
    """The saved HF fast tokenizer run by the `tokenizers` library alone.

    Why: `transformers` imports torch, and the two imports are ~5 s of CPU before an ONNX actor
    can embed its first row (measured on the dev box: actor start 5.6 s → see README
    Performance). Ids, attention mask and token type ids are the same as
    `AutoTokenizer(texts, padding=True, truncation="longest_first", max_length=L)` — the fast
    tokenizer *is* this `tokenizers.Tokenizer`, configured here from tokenizer_config.json;
    tests/encoders/test_backends.py compares the two on the sample catalog and on edge texts.
    """

    def __init__(self, directory: Path, max_length: int):
        from tokenizers import Tokenizer

        config = json.loads((directory / "tokenizer_config.json").read_text())
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tok.enable_truncation(
            max_length=max_length, direction=config.get("truncation_side", "right")
        )
        pad = config.get("pad_token") or "[PAD]"
        pad_id = tok.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"{directory}: pad token {pad!r} not in the vocabulary")
        tok.enable_padding(
            direction=config.get("padding_side", "right"),
            pad_id=pad_id,
            pad_type_id=int(config.get("pad_token_type_id", 0)),
            pad_token=pad,
        )
        self._tok = tok

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self._tok.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


class _HFTokenizer:
    """Fallback for a saved tokenizer without tokenizer.json (a slow, Python-only tokenizer)."""

    def __init__(self, directory: Path, max_length: int):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(directory))
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self._tok(
            texts,
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="np",
        )
        return {k: v.astype(np.int64) for k, v in enc.items()}


def load_tokenizer(directory: Path, max_length: int):
    """FastTokenizer when the export saved a tokenizer.json (every BERT-family model), else HF."""
    if (directory / "tokenizer.json").exists():
        return FastTokenizer(directory, max_length)
    return _HFTokenizer(directory, max_length)


class OnnxEncoder:
    """Same contract as encoder.Encoder (`encode(texts) -> (n, dim) float32`, input order).

    Texts are sorted by length over the whole call (one unit, up to rows_per_part texts) and cut
    into `batch_size` batches, each padded to its own longest text, so little compute goes to
    padding — what sentence-transformers' encode does for the torch backend.
    """

    def __init__(
        self,
        directory: Path,
        int8: bool = False,
        batch_size: int = 64,
        normalize: bool = False,
        threads: int = 1,
    ):
        meta = json.loads((Path(directory) / "meta.json").read_text())
        self.input_names = meta["input_names"]
        self.max_seq_length = meta["max_seq_length"]
        self.dim = int(meta["dim"])
        self.tokenizer = load_tokenizer(Path(directory) / "tokenizer", self.max_seq_length)
        name = "model-int8.onnx" if int8 else "model.onnx"
        self.session = _session(Path(directory) / name, threads)
        self.batch_size = batch_size
        self.normalize = normalize

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """What sentence-transformers' Transformer.preprocess does for text, in numpy."""
        enc = self.tokenizer(texts)
        return {k: enc[k] for k in self.input_names}

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, D)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            feeds = self.tokenize([texts[i] for i in idx])
            out[idx] = self.session.run(None, feeds)[0]
        if self.normalize:  # as torch.nn.functional.normalize(p=2, eps=1e-12)
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


class CudaEncoder:
    """Torch on a CUDA device, tuned for throughput (same contract as encoder.Encoder).

    What it adds over `SentenceTransformer.encode`: texts sorted by length over the whole call;
    tokenization of batch i+1 on the CPU while the GPU runs batch i (kernels are queued
    asynchronously; the only sync is the device→host copy of the previous batch's output);
    token tensors in pinned host memory copied with `non_blocking=True`; SDPA attention
    (flash / memory-efficient kernels for fp16/bf16); `inference_mode`.
    """

    def __init__(self, st, batch_size: int = 256, normalize: bool = False):
        import torch

        self.st, self.batch_size, self.normalize = st, batch_size, normalize
        self.device = next(st.parameters()).device
        self.dim = int(st.get_embedding_dimension())
        try:
            st[0].model.set_attn_implementation("sdpa")
        except Exception as e:  # an architecture without SDPA keeps its own attention
            log.info("SDPA not available for this model (%s); keeping its attention", e)
        self._torch = torch

    def _features(self, texts: list[str]) -> dict:
        feats = self.st.preprocess(texts)
        out = {}
        for k, v in feats.items():
            if isinstance(v, self._torch.Tensor):
                v = v.pin_memory().to(self.device, non_blocking=True)
            out[k] = v
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, D)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        pending = None  # (indices, device tensor) of the batch in flight
        with torch.inference_mode():
            feats = self._features([texts[i] for i in batches[0]])
            for n, idx in enumerate(batches):
                emb = self.st(feats)["sentence_embedding"]
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                if n + 1 < len(batches):  # CPU tokenizes the next batch while the GPU works
                    feats = self._features([texts[i] for i in batches[n + 1]])
                if pending is not None:
                    out[pending[0]] = pending[1].float().cpu().numpy()
                pending = (idx, emb)
            out[pending[0]] = pending[1].float().cpu().numpy()
        return out


def load_encoder(
    model: str,
    backend: str = "torch",
    device: str = "cpu",
    precision: str = "auto",
    batch_size: int | None = None,
    normalize: bool = False,
    threads: int | None = None,
):
    """The encoder an actor uses: OnnxEncoder for `onnx*` on CPU, else encoder.Encoder (torch).

    ONNX Runtime here is the CPU build: a GPU actor asked for `onnx*` runs torch on the GPU (fp16
    by default), which is faster than any CPU path, and says so in the log.
    """
    from fashion_batch.encoders.models import Encoder, load_model, resolve_model

    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    # A GPU needs big batches to be busy; on CPU small ones win (less padding, activations stay
    # in cache): 2 threads, 500-text units, batch 16 vs 64: ONNX int8 +10%, torch +8%.
    batch_size = batch_size or (GPU_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE)
    if backend != "torch":
        if device.startswith("cuda"):
            log.warning("--backend %s is a CPU path; this actor has CUDA: using torch", backend)
        elif precision not in ("auto", "fp32"):
            log.warning("--backend %s ignores --precision %s", backend, precision)
        directory = None if device.startswith("cuda") else prepare(resolve_model(model), backend)
        if directory is not None:
            return OnnxEncoder(
                directory, backend == "onnx-int8", batch_size, normalize, threads or 1
            )
    st = load_model(model, device, precision)
    if device.startswith("cuda"):
        return CudaEncoder(st, batch_size, normalize)
    return Encoder(st, batch_size, normalize)
