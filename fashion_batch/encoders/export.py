"""ONNX export of a sentence-transformers model, cached per node, for `--backend onnx*`.

Why: on CPU the torch eager forward of a small encoder leaves speed on the table; the same graph
run by ONNX Runtime is faster with identical output, and int8 weights are faster again
(fashion_batch.encoders.int8; figures in docs/performance.md). No `optimum`: installing
`optimum[onnxruntime]` downgrades transformers (design.md pitfall), so the export is
`torch.onnx.export` and the runtime is `onnxruntime` itself (fashion_batch.encoders.onnx).

* The *whole* sentence-transformers forward is exported — Transformer → Pooling → Dense →
  Normalize, whatever of those the model has — so pooling, the seed's Dense head and
  normalization are the very ops sentence-transformers runs, not a re-implementation. Only those
  module types are exported (`SUPPORTED`); any other head makes `prepare` return None and the
  job runs the torch backend, with a warning saying so.
* Every export is checked against torch on `CHECK_TEXTS` (max abs diff within `FP32_TOLERANCE`),
  from one character to past any max_seq_length, padded together in one batch and each alone,
  before it is cached; one that differs raises `BackendError`. The difference is kept in
  meta.json: the fp32 graph is also the reference the quality gate checks int8 against
  (embed/reference.py).
* The export is cached under `$FASHION_BATCH_CACHE` (default `~/.cache/fashion-batch`) in a dir
  keyed by the model digest (`trust.model_digest`: every file that changes the vectors) and the
  export recipe, written atomically (tmp dir + rename), so concurrent actors on one node never see
  half a file and a changed model never reuses a stale graph. The tokenizer and max_seq_length
  are saved beside it: an ONNX actor loads neither torch weights nor sentence-transformers.
* meta.json records the sha256 of every other file of the cache dir when it is written; `prepare`
  checks them before the cache is used, and a file that differs (a torn copy, a disk error, a
  hand edit) is rebuilt with a warning, never run as it is.
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

from fashion_batch.encoders import registry
from fashion_batch.encoders.int8 import quantize
from fashion_batch.encoders.models import load_model
from fashion_batch.encoders.onnx import open_session
from fashion_batch.encoders.trust import file_sha256, model_digest

log = logging.getLogger(__name__)

# Bump when the export or quantization recipe, or the cache dir's layout, changes: old cache
# entries are then ignored. v4: meta.json records the files' sha256. v5: model-fused.onnx.
# v6: checked on CHECK_TEXTS, the difference to torch kept in meta.json. v7: int8 keeps the
# MatMuls it hurts most fp32 (encoders/sensitivity.py).
RECIPE = "v7"
OPSET = 17
FP32_TOLERANCE = 1e-4
SUPPORTED = ("Transformer", "Pooling", "Dense", "Normalize")
PROBE_TEXTS = [
    "Vintage red silk slip dress, size S. Worn twice, no marks; bias cut, adjustable straps.",
    "Levi's 501 jeans",
    "Nike Air Max 90 trainers in white/grey, UK 9 — box included, soles clean, laces replaced.",
    "x",
]
# PROBE_TEXTS trace the graph and calibrate int8. The check adds one listing at growing lengths,
# the last truncated at any max_seq_length, so that sequence lengths from a few tokens to the
# limit, truncation, and padding beside short rows are all compared.
_LONG = (
    "Hand-finished wool-blend overcoat, double-breasted, horn buttons; lining replaced, "
    + "one moth nick by the left cuff (photo 7), otherwise clean: 54 cm pit to pit. " * 40
).split()
CHECK_TEXTS = [*PROBE_TEXTS, *(" ".join(_LONG[:n]) for n in (12, 40, 100, len(_LONG)))]


class BackendError(RuntimeError):
    """An export that does not reproduce the torch model (never cached)."""


def cache_root() -> Path:
    return Path(os.environ.get("FASHION_BATCH_CACHE", "~/.cache/fashion-batch")).expanduser()


def supported_modules(st) -> tuple[bool, list[str]]:
    """(all supported?, module class names) of a loaded SentenceTransformer."""
    names = [type(m).__name__ for m in st]
    return all(n in SUPPORTED for n in names), names


FP32_GRAPH = "model.onnx"
FUSED_GRAPH = "model-fused.onnx"  # FP32_GRAPH with ORT's transformer fusions; what `onnx` runs
INT8_GRAPH = "model-int8.onnx"
META = "meta.json"


def cache_dir(model_dir: str) -> Path:
    return cache_root() / "onnx" / f"{model_digest(model_dir)[:24]}-{RECIPE}-opset{OPSET}"


def prepare(model_dir: str, backend: str) -> Path | None:
    """Make sure the ONNX graph for `backend` is cached and intact; return the cache dir, or None
    when the model has a module the export does not cover (the caller then uses torch)."""
    spec = registry.backend(backend)
    if not spec.onnx:
        return None
    target = cache_dir(model_dir)
    damaged = damaged_files(target) if target.exists() else []
    if [name for name in damaged if name != INT8_GRAPH]:
        log.warning(
            "ONNX cache %s: %s differ from the sha256 recorded at export: exporting again",
            target,
            ", ".join(damaged),
        )
        _discard(target)
    if not (target / FP32_GRAPH).exists() and not _export(model_dir, target):
        return None
    if spec.int8 and (INT8_GRAPH in damaged or not (target / INT8_GRAPH).exists()):
        if INT8_GRAPH in damaged:
            log.warning(
                "ONNX cache %s: %s differs from the sha256 recorded at export: quantizing again",
                target,
                INT8_GRAPH,
            )
        measured = quantize(target, PROBE_TEXTS, CHECK_TEXTS)
        _record_sha256(target, INT8_GRAPH, int8=measured)
    return target


def _cached_files(directory: Path) -> list[str]:
    """The cache dir's files but meta.json and temporary (dot) files, relative, sorted."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != META and not p.name.startswith(".")
    )


def damaged_files(directory: Path) -> list[str]:
    """Files of a cache dir whose sha256 is not the one meta.json recorded (or is not recorded,
    or whose recorded file is gone); ["meta.json"] when meta.json itself is unreadable."""
    try:
        recorded = json.loads((directory / META).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return [META]
    present = _cached_files(directory)
    bad = [name for name in present if recorded.get(name) != file_sha256(directory / name)]
    return bad + sorted(set(recorded) - set(present))


def _record_sha256(directory: Path, name: str, **fields) -> None:
    """Add `name`'s sha256 (and `fields`) to meta.json (written beside, then renamed: readers
    see either)."""
    meta = json.loads((directory / META).read_text())
    meta["sha256"][name] = file_sha256(directory / name)
    meta.update(fields)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=2))
    os.replace(tmp, directory / META)


def _discard(target: Path) -> None:
    """Move a damaged cache dir aside (one rename: no reader sees it half deleted), delete it."""
    aside = target.with_name(f".tmp-stale-{os.getpid()}-{target.name}")
    try:
        os.replace(target, aside)
    except FileNotFoundError:  # another process on this node discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def _export(model_dir: str, target: Path) -> bool:
    import torch

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
    # the check's batches: every check text padded together, then each text alone
    checks = [st.preprocess(CHECK_TEXTS)] + [st.preprocess([t]) for t in CHECK_TEXTS]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with torch.inference_mode():
            expected = [graph(*(c[k] for k in input_names)).numpy() for c in checks]
        axes = {k: {0: "batch", 1: "seq"} for k in input_names}
        with warnings.catch_warnings():  # tracer notes on shape checks; the check decides
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                args,
                str(tmp / FP32_GRAPH),
                input_names=input_names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter needs no onnxscript; handles HF BERTs
            )
        st.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        session = open_session(tmp / FP32_GRAPH, 1)
        used = [i.name for i in session.get_inputs()]  # the exporter drops unused inputs
        feeds = [{k: c[k].numpy() for k in used} for c in checks]
        err = _max_diff(session, feeds, expected)
        if err > FP32_TOLERANCE:
            raise BackendError(f"ONNX export differs from torch by {err:.2e} > {FP32_TOLERANCE}")
        diffs = {FP32_GRAPH: err}
        if (fused := _fuse(st, tmp, feeds, expected)) is not None:
            diffs[FUSED_GRAPH] = fused
        meta = {
            "input_names": used,
            "max_seq_length": int(st.max_seq_length),
            "dim": int(st.get_embedding_dimension()),
            "modules": names,
            "model_dir": model_dir,
            "torch_max_abs_diff": {"texts": len(CHECK_TEXTS), **diffs},
            "sha256": {name: file_sha256(tmp / name) for name in _cached_files(tmp)},
        }
        (tmp / META).write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, target)  # atomic; another actor may have won the race: fine
        except OSError:
            if not (target / FP32_GRAPH).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _max_diff(session, feeds: list[dict], expected: list[np.ndarray]) -> float:
    """The largest absolute difference between the session's outputs and torch's, batch by
    batch."""
    return max(
        float(np.abs(session.run(None, f)[0] - e).max())
        for f, e in zip(feeds, expected, strict=True)
    )


def _fuse(st, directory: Path, feeds: list[dict], expected: list[np.ndarray]) -> float | None:
    """Write FUSED_GRAPH beside FP32_GRAPH: ONNX Runtime's transformer optimizer fuses each
    layer's attention, the skip connections' LayerNorms and the bias+GELU into single kernels,
    the same fp32 math in fewer, faster ops (the plain export runs every MatMul, Softmax and
    LayerNorm as separate ops). Kept only if it reproduces torch within FP32_TOLERANCE on the
    check texts; otherwise (or for an encoder the optimizer does not know) the `onnx` backend
    runs FP32_GRAPH. int8 is quantized from FP32_GRAPH, whose plain MatMuls it knows how to
    quantize. Returns the fused graph's difference to torch, None when it is not kept."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = st[0].model.config
    if config.model_type not in ("bert", "distilbert"):
        return None
    heads = getattr(config, "num_attention_heads", None) or config.n_heads
    hidden = getattr(config, "hidden_size", None) or config.dim
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused = optimize_model(
                str(directory / FP32_GRAPH),
                model_type="bert",
                num_heads=heads,
                hidden_size=hidden,
                opt_level=1,  # the fusions only; ORT's session applies the rest at load
            )
        fused.save_model_to_file(str(directory / FUSED_GRAPH))
        err = _max_diff(open_session(directory / FUSED_GRAPH, 1), feeds, expected)
    except Exception as e:  # an optimizer that cannot handle the graph: the plain one runs
        log.warning("ONNX fusion failed (%s): --backend onnx runs the unfused graph", e)
        (directory / FUSED_GRAPH).unlink(missing_ok=True)
        return None
    if err > FP32_TOLERANCE:
        log.warning("fused ONNX graph differs from torch by %.2e: not used", err)
        (directory / FUSED_GRAPH).unlink()
        return None
    return err


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
