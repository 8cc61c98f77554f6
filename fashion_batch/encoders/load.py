"""`load_encoder`: what an embed actor calls to get the encoder for its backend and device."""

from __future__ import annotations

import logging

from fashion_batch.encoders import registry
from fashion_batch.encoders.cuda import CudaEncoder
from fashion_batch.encoders.export import prepare
from fashion_batch.encoders.models import Encoder, load_model, resolve_model
from fashion_batch.encoders.onnx import OnnxEncoder

log = logging.getLogger(__name__)


def load_encoder(
    model: str,
    backend: str = "torch",
    device: str = "cpu",
    precision: str = "auto",
    batch_size: int | None = None,
    normalize: bool = False,
    threads: int | None = None,
):
    """The encoder an actor uses: OnnxEncoder for `onnx*` on CPU, CudaEncoder on a GPU, else
    models.Encoder (torch on CPU).

    ONNX Runtime here is the CPU build: a GPU actor asked for `onnx*` runs torch on the GPU (fp16
    by default), which is faster than any CPU path, and says so in the log. `batch_size` None:
    the registry's default for the device (why they differ: registry.CPU_BATCH_SIZE).
    """
    cuda = device.startswith("cuda")
    backend = registry.resolve(backend, cuda, precision)
    spec = registry.backend(backend)
    batch_size = batch_size or (registry.GPU_BATCH_SIZE if cuda else registry.CPU_BATCH_SIZE)
    if spec.onnx:
        if cuda:
            log.warning("--backend %s is a CPU path; this actor has CUDA: using torch", backend)
        elif precision not in ("auto", "fp32"):
            log.warning("--backend %s ignores --precision %s", backend, precision)
        directory = None if cuda else prepare(resolve_model(model), backend)
        if directory is not None:
            return OnnxEncoder(directory, spec.int8, batch_size, normalize, threads or 1)
    st = load_model(model, device, precision)
    if cuda:
        return CudaEncoder(st, batch_size, normalize)
    return Encoder(st, batch_size, normalize)
