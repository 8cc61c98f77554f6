"""Which weight MatMuls to keep in fp32 for int8: measured end to end, once per export.

Why: dynamic int8 rounds every MatMul a little, but they do not matter alike: one or two can
carry much of the damage to the final vector (in MiniLM, layer 0's FFN down-projection, whose
error every later layer carries on; docs/performance.md), and long texts show it most. Which
MatMul it is depends on the weights, so it is measured per model rather than named in code.

How: one fp32 graph in which every MatMul that int8 would quantize runs *simulated* int8
(`DynamicQuantizeLinear` → `DequantizeLinear` on its input, the weight rounded per output
channel as `quantize_dynamic` rounds it), each beside its exact fp32 MatMul, with a boolean graph
input choosing which of the two feeds on. One session then answers "how far from fp32 is the
whole int8 graph, and how far with only MatMul *m* exact?" for every *m*, on the export's check
texts. A MatMul whose exact version removes at least `SHARE` of the whole error is kept fp32,
the largest first, at most `LIMIT` of them, so the speed cost stays bounded. The simulation is
not the int8 kernels bit for bit (float noise upstream flips a rounding downstream), but its
error is the same size (tests/encoders/test_backends.py), which is what the choice needs.
"""

from __future__ import annotations

import numpy as np

SHARE = 0.1  # of the whole int8 error on the check texts that one MatMul must account for
LIMIT = 2  # MatMuls kept fp32 at most
KEEP_INPUT = "fp32_keep"
WEIGHT_QMAX = 64  # quantize_dynamic's reduced-range symmetric int8: [-64, 64] per channel


def rounded_weight(w: np.ndarray) -> np.ndarray:
    """`w` (in, out) as per-output-channel symmetric 7-bit int8 weights dequantize to."""
    scale = np.abs(w).max(axis=0) / WEIGHT_QMAX
    scale[scale == 0] = 1.0
    return (np.clip(np.round(w / scale), -WEIGHT_QMAX, WEIGHT_QMAX) * scale).astype(np.float32)


def simulated(model, names: list[str]):
    """A copy of `model` where each MatMul in `names` runs simulated int8 unless input
    `KEEP_INPUT` (bool, one per name, in order) is true at its index."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnx.helper import make_node, make_tensor_value_info

    sim = onnx.ModelProto()
    sim.CopyFrom(model)
    weights = {i.name: i for i in sim.graph.initializer}
    index = {name: i for i, name in enumerate(names)}
    rounded_x: dict[str, str] = {}
    out: list = []
    for node in sim.graph.node:
        if node.name not in index:
            out.append(node)
            continue
        x, w, y = node.input[0], node.input[1], node.output[0]
        p = f"{node.name}/sim"
        if x not in rounded_x:
            q = [f"{x}/sim_q", f"{x}/sim_scale", f"{x}/sim_zero"]
            out.append(make_node("DynamicQuantizeLinear", [x], q, name=f"{x}/SimQuantize"))
            out.append(make_node("DequantizeLinear", q, [f"{x}/sim"], name=f"{x}/SimDequant"))
            rounded_x[x] = f"{x}/sim"
        sim.graph.initializer.extend(
            [
                numpy_helper.from_array(
                    rounded_weight(numpy_helper.to_array(weights[w])), p + "_w"
                ),
                numpy_helper.from_array(np.array(index[node.name], dtype=np.int64), f"{p}_i"),
            ]
        )
        out += [
            make_node("MatMul", [x, w], [f"{p}_exact"], name=f"{p}/Exact"),
            make_node("MatMul", [rounded_x[x], f"{p}_w"], [f"{p}_int8"], name=f"{p}/Int8"),
            make_node("Gather", [KEEP_INPUT, f"{p}_i"], [f"{p}_keep"], name=f"{p}/Keep"),
            make_node("Where", [f"{p}_keep", f"{p}_exact", f"{p}_int8"], [y], name=node.name),
        ]
    del sim.graph.node[:]
    sim.graph.node.extend(out)
    sim.graph.input.append(make_tensor_value_info(KEEP_INPUT, TensorProto.BOOL, [len(names)]))
    return sim


def _error(vectors: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Mean 1 - cosine over every row of every check batch."""
    a, b = np.concatenate(vectors), np.concatenate(reference)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.mean(1.0 - cos))


def keep_fp32(model, names: list[str], feeds: list[dict]) -> tuple[list[str], dict]:
    """The MatMuls among `names` (those int8 would quantize) to keep fp32, and what was measured:
    {"int8_error": error with all of them int8, "kept_error": with the chosen ones exact,
    "largest_share": {name: share of the error it removes} for the few largest}."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        simulated(model, names).SerializeToString(), providers=["CPUExecutionProvider"]
    )

    def error(keep: np.ndarray) -> float:
        got = [session.run(None, {**f, KEEP_INPUT: keep})[0] for f in feeds]
        return _error(got, exact)

    exact = [session.run(None, {**f, KEEP_INPUT: np.ones(len(names), bool)})[0] for f in feeds]
    whole = error(np.zeros(len(names), bool))
    share = {}
    for i, name in enumerate(names):
        keep = np.zeros(len(names), bool)
        keep[i] = True
        share[name] = (whole - error(keep)) / whole if whole > 0 else 0.0
    ranked = sorted(names, key=lambda n: -share[n])
    chosen = [n for n in ranked[:LIMIT] if share[n] >= SHARE]
    final = np.array([n in chosen for n in names])
    return chosen, {
        "int8_error": whole,
        "kept_error": error(final),
        "largest_share": {n: round(share[n], 4) for n in ranked[:4]},
    }
