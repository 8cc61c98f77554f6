"""The model side of a worker: the seed architecture with the seed's loss, optimiser and
schedule, its DDP wrapping, and the held-out evaluations before and after training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fashion_batch.train.config import EVAL_K, MNRL_SCALE


@dataclass
class Training:
    """The seed model and everything that updates it; a checkpoint saves and restores all of it.

    Args:
        model: the SentenceTransformer (Transformer → mean Pooling → Dense head).
        loss: MultipleNegativesRankingLoss over `model`.
        optimizer: AdamW over the model's parameters.
        scheduler: linear decay to 0 over the whole run, no warm-up.
        scaler: the fp16 grad scaler (a no-op when `use_amp` is off).
        use_amp: fp16 autocast; only on CUDA, where it is fast and supported.
        gather: MNRL gathers candidates from every worker.
    """

    model: Any
    loss: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    use_amp: bool
    gather: bool


def build_training(config: dict, device, world: int, total_steps: int) -> Training:
    """The seed recipe on `config["base_model"]`, seeded first, so every rank (and a one-worker
    run) starts from the same weights, Dense head included.

    Args:
        config: the train loop config (`TrainConfig` fields plus the resolved gather flag).
        device: this worker's torch device.
        world: number of workers; gathering across one worker is a no-op and is switched off.
        total_steps: optimiser steps of the whole run, the length of the linear decay.
    """
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim
    from transformers import get_linear_schedule_with_warmup, set_seed

    from fashion_batch.encoders.models import build_seed_model

    use_amp = device.type == "cuda"  # fp16 only on GPU: on CPU it is slow or refused
    set_seed(config["seed"])
    model = build_seed_model(config["base_model"], max_seq_length=config["max_seq_length"])
    model.to(device)
    gather = bool(config["gather_across_devices"]) and world > 1
    loss = MultipleNegativesRankingLoss(
        model, scale=MNRL_SCALE, similarity_fct=cos_sim, gather_across_devices=gather
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    return Training(model, loss, optimizer, scheduler, scaler, use_amp, gather)


def prepare_ddp(loss):
    """Wrap the loss (which holds the model) in DDP. The pooler of BERT-style bases is never used
    by mean pooling: DDP must not wait for its gradients."""
    import ray.train.torch

    return ray.train.torch.prepare_model(
        loss, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
    )


def features(model, texts: list[str], device) -> dict:
    """Tokenise one column of this rank's rows and move the tensors to `device`."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in model.preprocess(texts).items()}


def evaluate(model, data: dict[str, list[str]]) -> dict[str, float]:
    """IR metrics at `EVAL_K` of `model` on held-out triplets."""
    from fashion_batch.evaluate import evaluate_triplets

    return evaluate_triplets(model, data["anchor"], data["positive"], k=EVAL_K)


def evaluate_base(base_model: str, device, data: dict[str, list[str]]) -> dict[str, float]:
    """The base model as published (its own pooling and normalisation): what a user would get
    without training."""
    from fashion_batch.encoders.models import load_model

    base = load_model(base_model, device=str(device), precision="fp32")
    try:
        return evaluate(base, data)
    finally:
        del base
