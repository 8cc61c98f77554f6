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
        Backend(
            "auto",
            "ONNX Runtime fp32 on CPU actors (the fused graph, within 1e-4 of torch), "
            "sentence-transformers on torch on GPU actors or for --precision bf16",
            onnx=True,
        ),
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


def resolve(name: str, cuda: bool, precision: str) -> str:
    """The backend an actor runs for `--backend name`: `auto` is `onnx` on a CPU actor in fp32
    (ONNX Runtime's fused graph: exact to 1e-4 and faster to start, no torch import) and
    `torch` otherwise (a GPU, or a precision ONNX Runtime's CPU path does not have)."""
    if name != "auto":
        return name
    return "onnx" if not cuda and precision in ("auto", "fp32") else "torch"


def backend(name: str) -> Backend:
    """The registry entry for a `--backend` value; ValueError naming the choices otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {name!r}")
    return REGISTRY[name]
