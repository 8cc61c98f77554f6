"""int8 weights for `--backend onnx-int8`: ONNX Runtime dynamic quantization, done carefully.

Plain `quantize_dynamic` loses too much accuracy against fp32 (design.md pitfall), so:

* `split_outliers` first moves each weight MatMul input's `OUTLIER_CHANNELS` largest channels
  into a small fp32 MatMul beside it;
* then the one or two MatMuls whose rounding does most of the damage to the final vector stay
  fp32, measured per model on the check texts (fashion_batch.encoders.sensitivity);
* every other MatMul with a constant weight is quantized per output channel to signed int8
  with a 7-bit range (`reduce_range`);
* embeddings, LayerNorm, Softmax, GELU and the attention score MatMuls (their B is not a
  constant) stay fp32.

Why 7-bit: on x86 CPUs without VNNI (AVX2 only) ORT's u8×s8 kernel sums pairs of products in
int16 (vpmaddubsw), which saturates with full-range weights; with 7-bit weights it cannot.
Why the split: see `split_outliers`.

Dynamic int8 scales activations per batch, so a row's result depends a little on its
batch-mates, and smaller batches are the more accurate: tests/encoders/test_backends.py checks
the cosine to fp32 torch at the CPU default batch size and at a larger one. Measured accuracy and
speed are in docs/performance.md.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from fashion_batch.encoders import sensitivity
from fashion_batch.encoders.onnx import load_tokenizer

OUTLIER_CHANNELS = 4  # per MatMul input; why: split_outliers


def quantize(target: Path, probe_texts: list[str], check_texts: list[str]) -> dict:
    """model.onnx → model-int8.onnx in the export dir `target`: outlier channels (peaks over
    `probe_texts`) split off in fp32 (`split_outliers`), the MatMuls that int8 hurts most on
    `check_texts` (each alone) kept fp32 (`sensitivity.keep_fp32`), every other MatMul with a
    constant weight dynamically quantized (7-bit per-channel weights). Returns what was kept
    fp32 and the measured errors, for meta.json."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(target / "model.onnx"))
    meta = json.loads((target / "meta.json").read_text())
    tokenizer = load_tokenizer(target / "tokenizer", meta["max_seq_length"])

    def feeds(texts: list[str]) -> dict[str, np.ndarray]:
        return {k: v for k, v in tokenizer(texts).items() if k in meta["input_names"]}

    kept_fp32 = split_outliers(model, channel_peaks(model, feeds(probe_texts)), OUTLIER_CHANNELS)
    rounded = [n.name for n in weight_matmuls(model) if n.name not in kept_fp32]
    sensitive, measured = sensitivity.keep_fp32(model, rounded, [feeds([t]) for t in check_texts])
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
            nodes_to_exclude=kept_fp32 + sensitive,
            extra_options={"MatMulConstBOnly": True},
        )
        os.replace(tmp, target / "model-int8.onnx")
        return {"fp32_matmuls": sensitive, **measured}
    finally:
        root.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _is_weight_matmul(node, weights) -> bool:
    """A MatMul whose B is a constant weight (what dynamic quantization turns int8)."""
    return node.op_type == "MatMul" and node.input[1] in weights


def weight_matmuls(model) -> list:
    weights = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if _is_weight_matmul(n, weights)]


def channel_peaks(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{activation name: max |x| per channel (last axis)} of every weight MatMul's input, over
    `feeds` (the probe texts), padding positions included: the runtime quantizer sees them too."""
    import onnx
    import onnxruntime as ort

    names = list(dict.fromkeys(n.input[0] for n in weight_matmuls(model)))
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
    activations have a few channels far larger than the rest (after LayerNorm, and after each
    FFN layer's GELU), so every other channel would lose most of its resolution. With those
    channels zeroed on the int8 path and multiplied in fp32 beside it (LLM.int8()'s
    decomposition, with the channels picked once at export on the probe texts: they are a
    property of the weights, not of the input), the FFN down-projections can run int8 too, all
    but the one or two `sensitivity.keep_fp32` measures as the most harmful. The rewrite alone
    is exact (tests/encoders/test_backends.py); the MatMul keeps its name, so the quantized
    graph's node names stay what they were. One mask and one gather per activation, shared by
    the MatMuls reading it (Q, K and V).
    """
    from onnx import numpy_helper

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
            split[x] = _split_activation(model, x, peaks[x], k, out)
        masked, outliers, idx = split[x]
        w = numpy_helper.to_array(weights[node.input[1]])
        kept_fp32.append(_split_matmul(model, node, masked, outliers, w[idx], out))
    del model.graph.node[:]
    model.graph.node.extend(out)
    return kept_fp32


def _split_activation(model, x: str, peak: np.ndarray, k: int, out: list):
    """Add `x * mask` (outliers zeroed) and `x[..., idx]` (the outliers) for activation `x`:
    their initializers to the model, their nodes to `out`. Returns (masked, outliers, idx)."""
    from onnx import helper, numpy_helper

    idx = np.sort(np.argsort(-peak, kind="stable")[:k]).astype(np.int64)
    mask = np.ones(len(peak), dtype=np.float32)
    mask[idx] = 0.0
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(mask, f"{x}/outlier_mask"),
            numpy_helper.from_array(idx, f"{x}/outlier_idx"),
        ]
    )
    out.append(
        helper.make_node("Mul", [x, f"{x}/outlier_mask"], [f"{x}/masked"], name=f"{x}/MaskOutliers")
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
    return f"{x}/masked", f"{x}/outliers", idx


def _split_matmul(model, node, masked: str, outliers: str, outlier_w: np.ndarray, out: list):
    """Append `masked @ W + outliers @ W[idx]` in place of MatMul `node` to `out` (the first
    MatMul keeps `node`'s name and weight); return the name of the fp32 outlier MatMul."""
    from onnx import helper, numpy_helper

    prefix = node.name or node.output[0]
    model.graph.initializer.append(numpy_helper.from_array(outlier_w, f"{prefix}/outlier_W"))
    out.append(
        helper.make_node("MatMul", [masked, node.input[1]], [f"{prefix}/int8_part"], name=node.name)
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
    return f"{prefix}/OutlierMatMul"
