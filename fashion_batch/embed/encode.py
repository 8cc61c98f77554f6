"""The embed stage: `EmbedUnits`, the class Ray Data's actor pool instantiates (the model loaded
once per actor, GPU when present), and `Embed`, the row-level encoding it runs on each packed
unit (stages.py packs and unpacks units; encoders/ holds the backends)."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fashion_batch.embed import ledger
from fashion_batch.embed.stages import (
    ACTOR,
    CARRIED,
    NODE,
    REASON,
    TEXT,
    pack,
    packed_table,
    unpack,
)
from fashion_batch.encoders import registry
from fashion_batch.runtime.faults import corrupt_vectors, unit_hook
from fashion_batch.runtime.ray import quiet_model_loading

log = logging.getLogger(__name__)


class Embed:
    """Encode the batch's non-quarantined rows with an encoder loaded once (`Embed.load`).

    Returns the batch without the text column and with `embedding`, a
    `fixed_size_list<float32>[D]` built here (a 2-D numpy return would become Ray's tensor
    extension type, which Polars and DuckDB read badly). Quarantined rows get a null embedding.

    Args:
        encoder: anything with `encode(texts) -> (n, dim) float32` (fashion_batch.encoders).
        dim: its output dimension; default `encoder.dim`.
    """

    def __init__(self, encoder, dim: int | None = None):
        self.encoder = encoder
        self.dim = int(encoder.dim if dim is None else dim)
        self.rows_encoded = 0  # texts given to the encoder so far (embed/ledger.py)

    @classmethod
    def load(
        cls,
        model: str,
        batch_size: int | None = None,
        precision: str = "auto",
        normalize: bool = False,
        threads: int | None = None,
        backend: str = "torch",
        device: str | None = None,
    ) -> Embed:
        """Load the encoder for this actor's device and backend.

        Args:
            model: a `--model` value, resolved on the actor's node.
            batch_size: texts per forward pass (None: registry.CPU_BATCH_SIZE / GPU_BATCH_SIZE).
            precision: auto | fp32 | fp16 | bf16.
            normalize: L2-normalize the embeddings.
            threads: torch / ONNX Runtime intra-op threads.
            backend: a registry backend; the ONNX ones (and `auto` on CPU) are a CPU path.
            device: "cpu" when the caller knows there is no GPU (embed/local.py); None: a Ray
                actor's assigned GPUs decide, else what torch finds.
        """
        from fashion_batch.encoders.load import load_encoder

        on_cpu = registry.resolve(backend, cuda=False, precision=precision)
        cpu_only = device == "cpu" or (_in_ray_worker() and not _assigned_gpus())
        if registry.backend(on_cpu).onnx and cpu_only:
            # A CPU actor on an ONNX backend: decided without importing torch, whose import
            # (with transformers) would dominate the actor's start-up (encoders.onnx says why).
            device = "cpu"
        else:
            import torch

            from fashion_batch.encoders.models import pick_device

            if threads:
                torch.set_num_threads(threads)
            device = device or pick_device()
            if device == "cpu" and _assigned_gpus():
                log.warning("actor was given a GPU but CUDA is unavailable; running on CPU")
        return cls(load_encoder(model, backend, device, precision, batch_size, normalize, threads))

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pc.is_null(batch.column(REASON)).to_numpy(zero_copy_only=False)
        texts = batch.column(TEXT).to_pylist()
        vectors = np.zeros((len(batch), self.dim), dtype=np.float32)  # (n, D)
        todo = ok
        if CARRIED in batch.column_names:  # --previous: unchanged rows keep last night's vector
            carried = batch.column(CARRIED).combine_chunks()
            if carried.type.list_size != self.dim:
                raise RuntimeError(
                    f"previous embeddings are {carried.type.list_size}-d, model {self.dim}-d"
                )
            have = carried.is_valid().to_numpy(zero_copy_only=False)
            flat = carried.flatten().to_numpy(zero_copy_only=False)  # (n_carried * D,)
            vectors[have] = flat.reshape(-1, self.dim)
            todo = ok & ~have
            batch = batch.drop_columns([CARRIED])
        idx = np.flatnonzero(todo)
        if len(idx):
            vectors[idx] = corrupt_vectors(self.encoder.encode([texts[i] for i in idx]))
            self.rows_encoded += len(idx)
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), self.dim, mask=pa.array(~ok)
        )
        return batch.drop_columns([TEXT]).append_column("embedding", embedding)


def _in_ray_worker() -> bool:
    """True inside a Ray task/actor (Ray then says which GPUs, if any, this process owns)."""
    if "ray" not in sys.modules:  # every Ray worker has imported it; the local runner need not
        return False
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:
        return False


def _assigned_gpus() -> list:
    if "ray" not in sys.modules:
        return []
    try:
        import ray

        return ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # outside a Ray worker
        return []


class EmbedUnits:
    """Embed, one packed unit at a time (the class Ray's actor pool instantiates).

    Args:
        embed: an `Embed` to use (tests share one loaded model); else `Embed.load(**kwargs)`.
        where: (node, actor) recorded for each unit; default this Ray actor's ids, or
            (None, None) outside Ray (the local runner names itself).
        kwargs: Embed.load's arguments.
    """

    def __init__(self, embed: Embed | None = None, where: tuple | None = None, **kwargs):
        if embed is None and _in_ray_worker():
            quiet_model_loading()  # the driver names the model once (embed.job), not each actor
        self.embed = embed if embed is not None else Embed.load(**kwargs)
        self.node, self.actor = where if where is not None else _where()

    def __call__(self, units: pa.Table) -> pa.Table:
        out, notes = [], ledger.notes(units)
        for (u, t), note in zip(unpack(units), notes, strict=True):
            unit_hook()
            with ledger.encoding(self.embed, note):
                out.append(pack(u, self.embed(t)))
        table = ledger.attach(packed_table(out), notes)
        # Where each unit was embedded, for the manifest's per-node counts (manifest.nodes).
        table = table.append_column(NODE, pa.array([self.node] * len(out), pa.string()))
        return table.append_column(ACTOR, pa.array([self.actor] * len(out), pa.string()))


def _where() -> tuple[str | None, str | None]:
    """(node id, actor id) of this Ray actor; (None, None) outside one."""
    if not _in_ray_worker():
        return None, None
    import ray

    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_actor_id()
