"""The model side of a worker: the seed architecture with the seed's loss, the head
initialisation, the held-out evaluations (base, step 0, every epoch) and the choice of the epoch
to publish. The optimiser, schedule and DDP wrapping are the trainer's (train/trainer.py)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fashion_batch.errors import InputError
from fashion_batch.evaluate.retrieval import PRIMARY
from fashion_batch.train.config import MNRL_SCALE

_ALL_GATHER_DEPRECATED = r"torch\.distributed\.nn\.functional\.all_gather is deprecated"


@dataclass
class Training:
    """The seed model and its loss, as the trainer gets them.

    Args:
        model: the SentenceTransformer (Transformer → mean Pooling → Dense head).
        loss: MultipleNegativesRankingLoss over `model`.
        use_amp: fp16 mixed precision; only on CUDA, where it is fast and supported.
        gather: MNRL gathers candidates from every worker.
        best: rank 0's CPU copy of the best epoch's weights so far (None: none scored yet).
    """

    model: Any
    loss: Any
    use_amp: bool
    gather: bool
    best: dict | None = None


def build_training(config: dict, device, world: int) -> Training:
    """The seed recipe on `config["base_model"]`, seeded first, so every rank (and a one-worker
    run) starts from the same weights, Dense head included.

    Args:
        config: the train loop config (`TrainConfig` fields plus the resolved gather flag).
        device: this worker's torch device.
        world: number of workers; gathering across one worker is a no-op and is switched off.
    """
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim
    from transformers import set_seed

    use_amp = device.type == "cuda"  # fp16 only on GPU: on CPU it is slow or refused
    set_seed(config["seed"])
    model = build_model(config["base_model"], config)
    model.to(device)
    gather = bool(config["gather_across_devices"]) and world > 1
    if gather:  # sentence-transformers gathers through torch.distributed.nn.all_gather, which
        # torch deprecates (FutureWarning) for a private API: theirs to move, harmless here
        warnings.filterwarnings("ignore", _ALL_GATHER_DEPRECATED, FutureWarning)
    loss = MultipleNegativesRankingLoss(
        model, scale=MNRL_SCALE, similarity_fct=cos_sim, gather_across_devices=gather
    )
    return Training(model, loss, use_amp, gather)


def build_model(base: str, config: dict):
    """The seed architecture on `base` with its head initialised (`init_head`), ending in a
    Normalize module unless `normalize_output` is off.

    Why Normalize: MNRL with cos_sim trains only the angles between embeddings; their lengths
    are whatever the untrained parts make them. The seed is served by dot product (its
    similarity function), and on unnormalised vectors a dot product ranks long vectors first,
    so users would not get the ranking that was trained and evaluated. Unit vectors make dot
    product and cosine the same ranking, at 768-d as before. The loss is unchanged (cos_sim of
    unit vectors is the cosine), so the training is the seed's either way; `--no-normalize-output`
    keeps the seed's exact module list.
    """
    from sentence_transformers.sentence_transformer.modules import Normalize

    from fashion_batch.encoders.models import build_seed_model

    model = build_seed_model(base, max_seq_length=config["max_seq_length"])
    init_head(model[2], config["head_init"])
    if config["normalize_output"]:
        model.append(Normalize())
    return model


def init_head(dense, how: str) -> None:
    """Initialise the seed's Dense(d → 768, no bias) head in place.

    `random` keeps nn.Linear's own init, the seed's: a random projection that scrambles the
    base's geometry, so the first steps are spent recovering it. `preserve` makes the head an
    isometry of the base's embedding space: the identity when d = 768, and for d < 768 a
    semi-orthogonal W (768 × d, orthonormal columns, W^T W = I), drawn from the seeded generator.
    Then ‖Wx‖ = ‖x‖ and ⟨Wx, Wy⟩ = ⟨x, y⟩, so every cosine (what MNRL and the evaluation score)
    at step 0 is the base's own, and training starts from what the base already knows.
    """
    import torch

    if how == "random":
        return
    weight = dense.linear.weight  # (out_dim, in_dim)
    out_dim, in_dim = weight.shape
    if in_dim > out_dim:
        raise InputError(
            f"--head-init preserve: the base emits {in_dim}-d, more than the head's {out_dim}; "
            "no linear map to fewer dimensions keeps every cosine (use --head-init random)"
        )
    with torch.no_grad():
        if in_dim == out_dim:
            weight.copy_(torch.eye(out_dim, dtype=weight.dtype))
        else:
            torch.nn.init.orthogonal_(weight)  # rows > cols: orthonormal columns, W^T W = I


def evaluate(model, retrieval) -> dict[str, float]:
    """Retrieval metrics of `model` on the held-out set (`evaluate.retrieval.Retrieval`)."""
    return retrieval.score(model)


def evaluate_base(base_model: str, device, retrieval) -> dict[str, float]:
    """The base model as published (its own pooling and normalisation): what a user would get
    without training, and what the quality gate compares the fine-tuned model with."""
    from fashion_batch.encoders.models import load_model

    base = load_model(base_model, device=str(device), precision="fp32")
    try:
        return evaluate(base, retrieval)
    finally:
        del base


@contextmanager
def eval_threads(config: dict, local_world: int):
    """On CPU, rank 0 evaluates with the threads of every worker on its node: the others wait
    in the next collective meanwhile, and encoding the whole catalog is most of an epoch's time."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config["cpus_per_worker"] * local_world)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_if_best(training: Training, state: dict, scores: dict) -> None:
    """Record an epoch's held-out scores; keep a copy of its weights if its NDCG@10 is the best
    so far (ties keep the earlier epoch: fewer steps away from the base)."""
    entry = {"epoch": state["epoch"], "step": state["step"], **scores}
    state["eval_epochs"].append(entry)
    best = state["best"]
    if best is None or scores[PRIMARY] > best[PRIMARY]:
        state["best"] = {k: entry[k] for k in ("epoch", "step", PRIMARY)}
        training.best = snapshot(training.model)


def snapshot(model) -> dict:
    """The model's weights, copied to CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def publishable(training: Training, state: dict) -> tuple[int | None, dict | None]:
    """(epoch, held-out scores) of the model to publish, loading the best epoch's weights into
    `training.model` when a later epoch scored lower. Without an evaluation set: the last epoch."""
    best = state["best"]
    if best is None:
        return state["epoch"], None
    if best["step"] != state["step"]:
        training.model.load_state_dict(training.best)
    scores = next(e for e in state["eval_epochs"] if e["step"] == best["step"])
    return best["epoch"], {k: v for k, v in scores.items() if k not in ("epoch", "step")}
