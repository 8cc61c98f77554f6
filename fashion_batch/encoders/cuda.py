"""The torch encoder for GPU actors, tuned for throughput."""

from __future__ import annotations

import logging

import numpy as np

from fashion_batch.encoders.tokens import TokenCount

log = logging.getLogger(__name__)


class CudaEncoder:
    """Torch on a CUDA device, tuned for throughput (same contract as models.Encoder).

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
        self.token_count = TokenCount()

    def _features(self, texts: list[str]) -> dict:
        feats = self.st.preprocess(texts)
        if "attention_mask" in feats:  # every BERT-family tokenizer returns one
            self.token_count.add(feats["attention_mask"])
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
