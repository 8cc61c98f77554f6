"""The one list of encoder backends and precisions: the CLI's choices and help, EmbedConfig's
checks, docs/cli.md, the embed job and the actors' encoder loading all read it from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    """An encoder runtime an embed actor can use.

    Args:
        name: the `--backend` value.
        summary: one line for `--help` and the docs.
        onnx: runs an exported ONNX graph with ONNX Runtime (CPU actors; GPU actors use torch).
        int8: int8 weights (checked against fp32 by tests/encoders).
    """

    name: str
    summary: str
    onnx: bool = False
    int8: bool = False


REGISTRY = {
    b.name: b
    for b in (
        Backend("torch", "sentence-transformers on torch (CUDA when the actor has a GPU)"),
        Backend("onnx", "ONNX Runtime, fp32 (CPU actors)", onnx=True),
        Backend("onnx-int8", "ONNX Runtime, int8 weights (CPU actors)", onnx=True, int8=True),
    )
}
BACKENDS = tuple(REGISTRY)
BACKENDS_HELP = "; ".join(f"{b.name}: {b.summary}" for b in REGISTRY.values())
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # auto = fp16 on CUDA, fp32 on CPU

# Texts per forward pass when --batch-size is not given. A GPU needs big batches to stay busy. On
# CPU small ones are faster (each batch is padded to its own longest text, and the activations
# stay in cache), and dynamic int8 is more accurate on them (it scales activations per batch).
CPU_BATCH_SIZE = 16
GPU_BATCH_SIZE = 256


def backend(name: str) -> Backend:
    """The registry entry for a `--backend` value; ValueError naming the choices otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {name!r}")
    return REGISTRY[name]
