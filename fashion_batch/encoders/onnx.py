"""Run an exported model (fashion_batch.encoders.export) with ONNX Runtime on CPU.

An ONNX actor imports neither torch nor transformers: the export dir holds the graph, the saved
tokenizer and meta.json (input names, max_seq_length, dim), and this module needs only
`onnxruntime`, `tokenizers` and numpy to turn texts into vectors.
"""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fashion_batch.encoders.registry import CPU_BATCH_SIZE
from fashion_batch.encoders.tokens import TokenCount


def open_session(path: Path, threads: int):
    """A CPU InferenceSession with `threads` intra-op threads and full graph optimization."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: a spinning thread holds a core that another
    # thread of the job (the gate's reference model loading, a write) is waiting for.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class FastTokenizer:
    """The saved HF fast tokenizer run by the `tokenizers` library alone.

    Why: `transformers` imports torch, and the two imports cost seconds of CPU before an ONNX
    actor can embed its first row (docs/performance.md). Ids, attention mask and token type ids
    are the same as `AutoTokenizer(texts, padding=True, truncation="longest_first",
    max_length=L)` — the fast tokenizer *is* this `tokenizers.Tokenizer`, configured here from
    tokenizer_config.json; tests/encoders/test_backends.py compares the two on the sample catalog
    and on edge texts.
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
        self._unpadded = Tokenizer.from_str(tok.to_str())
        self._unpadded.no_padding()

    def lengths(self, texts: list[str]) -> np.ndarray:
        """Each text's token count after truncation: the length its row of a batch needs."""
        return np.array([len(e.ids) for e in self._unpadded.encode_batch(texts)])

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
    """Same contract as models.Encoder (`encode(texts) -> (n, dim) float32`, input order).

    Texts are sorted by length over the whole call (one unit, up to `--rows-per-unit` texts) and
    cut into `batch_size` batches, each padded to its own longest text, so little compute goes to
    padding — what sentence-transformers' encode does for the torch backend, which sorts by
    characters; here the length is counted in tokens (one extra pass of the Rust tokenizer, cheap
    beside the model), so texts of the same character length but different token counts no
    longer pad each other.

    `threads`: an fp32 graph gets one session with that many intra-op threads; an int8 graph
    gets that many single-thread sessions, each running whole batches, taken in order by
    whichever is free. int8's matmuls over a small batch are too short to split well across
    threads, and batches run side by side keep every core busy instead (docs/performance.md).
    A batch's vectors depend only on its rows, not on which session ran it, so the output is
    the same for any thread timing.
    """

    def __init__(
        self,
        directory: Path,
        int8: bool = False,
        batch_size: int = CPU_BATCH_SIZE,
        normalize: bool = False,
        threads: int = 1,
        fused: bool = True,
    ):
        meta = json.loads((Path(directory) / "meta.json").read_text())
        self.input_names = meta["input_names"]
        self.max_seq_length = meta["max_seq_length"]
        self.dim = int(meta["dim"])
        self.tokenizer = load_tokenizer(Path(directory) / "tokenizer", self.max_seq_length)
        name = "model-int8.onnx" if int8 else "model.onnx"
        if not int8 and fused and (Path(directory) / "model-fused.onnx").exists():
            name = "model-fused.onnx"  # same math, fused kernels (export._fuse)
        path, threads = Path(directory) / name, max(1, int(threads))
        per_batch = int8 and threads > 1
        self.sessions = [open_session(path, 1) for _ in range(threads)] if per_batch else []
        self.session = self.sessions[0] if per_batch else open_session(path, threads)
        self._pool = ThreadPoolExecutor(threads, "onnx-batch") if per_batch else None
        self._counting = threading.Lock()
        self.batch_size = batch_size
        self.normalize = normalize
        self.token_count = TokenCount()

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """What sentence-transformers' Transformer.preprocess does for text, in numpy."""
        enc = self.tokenizer(texts)
        if "attention_mask" in enc:
            with self._counting:  # batches may be tokenized by several threads at once
                self.token_count.add(enc["attention_mask"])
        return {k: enc[k] for k in self.input_names}

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, D)
        if not texts:
            return out
        lengths = getattr(self.tokenizer, "lengths", None)  # in tokens; else in characters
        keys = lengths(texts) if lengths is not None else np.array([len(t) for t in texts])
        order = np.argsort(-keys, kind="stable")
        batches = [order[s : s + self.batch_size] for s in range(0, len(texts), self.batch_size)]

        def run(idx: np.ndarray, session) -> None:
            out[idx] = session.run(None, self.tokenize([texts[i] for i in idx]))[0]

        if self._pool is None:
            for idx in batches:
                run(idx, self.session)
        else:
            free = queue.SimpleQueue()
            for session in self.sessions:
                free.put(session)

            def task(idx: np.ndarray) -> None:
                session = free.get()
                try:
                    run(idx, session)
                finally:
                    free.put(session)

            list(self._pool.map(task, batches))  # re-raises a batch's error
        if self.normalize:  # as torch.nn.functional.normalize(p=2, eps=1e-12)
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
