"""What a model dir may hold, and its identity: the pickle refusal and the digest that keys
resume, `--previous`, `search`'s model check and the ONNX cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fashion_batch.errors import ModelError

# Names at a model dir's root that no loader reads: documentation (the model card, the training
# data and metrics notes) and version-control / hub-download bookkeeping. Every other file is
# part of the model's digest.
NOT_MODEL_FILES = frozenset(
    {"README.md", "training_metrics.json", "data_config.json", ".gitattributes", ".git", ".cache"}
)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(model_dir: str) -> list[str]:
    """The model dir's files (paths relative to it, sorted) less `NOT_MODEL_FILES`."""
    root = Path(model_dir)
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in NOT_MODEL_FILES
    )


def model_digest(model_dir: str) -> str:
    """sha256 over every file of the model dir that can change its vectors: the manifest's
    `model.sha256`, and the key of resume, `--previous` reuse, `search`'s model check and the ONNX
    export cache.

    Why every file rather than the weights: the vectors also depend on modules.json (which
    modules run), each module's config (pooling mode, the Dense activation, max_seq_length in
    sentence_bert_config.json, default prompts), config.json and the tokenizer files, and
    which of those a loader reads is each module's business. So everything is hashed except the
    few root names in `NOT_MODEL_FILES`, which no loader reads: editing a model card keeps a
    resume a resume. Each file is hashed with its relative path, so a moved file changes the
    digest too.
    """
    digest = hashlib.sha256()
    for name in model_files(model_dir):
        digest.update(f"{name}\0{file_sha256(Path(model_dir, name))}\n".encode())
    return digest.hexdigest()


# Formats read with pickle: torch.save (.bin, .pt, .pth), plain pickle, Lightning checkpoints.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_safetensors_only(model_dir: str) -> None:
    """Refuse (ModelError, exit 2) a model dir holding any pickle-format file, naming it.

    Why any file, not "any module that would read one": sentence-transformers 6 reads a module's
    pytorch_model.bin only when that module dir has no model.safetensors
    (`Module.load_torch_weights`), and transformers, asked for `use_safetensors=True`, never
    reads one, so today a .bin beside a .safetensors is dead weight. But which file a module
    reads is each module class's choice (old-style modules' `load(path)` read what they like) and
    has changed between versions; a module dir with a .bin and no safetensors *is* unpickled
    (with torch's `weights_only` unpickler, which has had escapes). A rule about files is one a
    user can check and act on, holds whatever the library version, and costs nothing to a model
    saved with safetensors, which holds no such file.
    """
    root = Path(model_dir)
    pickled = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickled:
        listed = ", ".join(pickled[:5]) + (
            f" and {len(pickled) - 5} more" if len(pickled) > 5 else ""
        )
        raise ModelError(
            f"{model_dir}: {listed}: pickle-format weights (loading them runs the unpickler); "
            "safetensors required: re-save the model with safetensors "
            "(model.save(dir, safe_serialization=True)) and remove the pickle files"
        )
