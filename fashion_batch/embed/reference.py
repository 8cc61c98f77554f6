"""The quality gate's reference model: the vectors every backend's output must reproduce.

* torch fp32 (every backend but int8): the model run by sentence-transformers on the driver. It
  is a different runtime from the ONNX graph the CPU actors run by default, so the parity check
  catches a faulty export as well as a faulty actor.
* the fp32 ONNX export (`--backend onnx-int8`): the graph the int8 weights were quantized from,
  itself checked against torch within `export.FP32_TOLERANCE` when it was exported (on texts from
  one character to past max_seq_length, padded together). What parity asks of int8 is whether
  quantization kept the vectors, and that graph answers it without importing torch and
  sentence-transformers, a CPU-bound cost as large as a sizeable share of a short int8 run's
  encoding (docs/performance.md). A model the export does not cover runs torch on the actors
  too, and gets the torch reference.

References kept for the next night (recheck.py) record their kind: torch's stand for any run's,
the export's only for another int8 run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fashion_batch.embed.config import EmbedConfig
from fashion_batch.encoders import registry

TORCH = "torch fp32"
EXPORT = "onnx fp32 export"


class Reference:
    """A loaded reference: `kind` (TORCH or EXPORT) and `encode(texts) -> (n, D) float32`."""

    def __init__(self, kind: str, encode: Callable[[list[str]], np.ndarray]):
        self.kind = kind
        self._encode = encode

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._encode(texts), dtype=np.float32)  # (n, D)


def wanted(config: EmbedConfig) -> str:
    """The kind of reference this run's parity check computes when it has to."""
    return EXPORT if registry.backend(config.backend).int8 else TORCH


def accepts(kept: str, config: EmbedConfig) -> bool:
    """Whether references kept under `kept` can stand for this run's: torch's for any run, the
    export's only for a run that would compute the export's itself."""
    return kept == TORCH or kept == wanted(config)


def load(config: EmbedConfig) -> Reference:
    """The reference model for this run (see the module docstring), loaded on the driver."""
    from fashion_batch.encoders.models import resolve_model
    from fashion_batch.runtime.ray import quiet_model_loading

    quiet_model_loading()
    if wanted(config) == EXPORT:
        from fashion_batch.embed.local import cpus
        from fashion_batch.encoders.export import prepare
        from fashion_batch.encoders.onnx import OnnxEncoder

        directory = prepare(resolve_model(config.model), "onnx")
        if directory is not None:
            # the pipeline is over when it encodes: the driver has the machine's cores
            graph = OnnxEncoder(directory, int8=False, threads=cpus(), fused=False)
            return Reference(EXPORT, graph.encode)
    from fashion_batch.encoders.models import load_model

    st = load_model(config.model, None, "fp32")
    return Reference(
        TORCH,
        lambda texts: st.encode(
            texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False
        ),
    )
