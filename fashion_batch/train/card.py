"""What a finished run tells its users: `training_metrics.json`, the model card appended to the
sentence-transformers README, and the terminal summary.

The final model is written by rank 0 into the last checkpoint (`model/`: a normal
sentence-transformers dir, safetensors only, model card, `training_metrics.json`) and the driver
copies it to OUTPUT, so OUTPUT is on the driver's machine even when rank 0 runs on another node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fashion_batch.train.config import METRICS_FILE, MNRL_SCALE

EVAL_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")


def training_metrics(
    config: dict,
    state: dict,
    *,
    world: int,
    steps_per_epoch: int,
    steps: int,
    gather: bool,
    precision: str,
    train_s: float,
) -> dict:
    """The metrics of one run (`training_metrics.json`); rank 0 fills in `published_epoch` and
    `eval_after` (that epoch's held-out scores), the driver adds the quality gate's record.

    Args:
        config: the train loop config.
        state: the run's position: loss log, evaluations before training, attempts.
        world: number of workers.
        steps_per_epoch: global batches per epoch.
        steps: optimiser steps done, over all attempts.
        gather: whether MNRL gathered candidates across workers.
        precision: "fp16" or "fp32".
        train_s: seconds the last attempt trained.
    """
    return {
        "base_model": config["base_model"],
        "train_triplets": len(config["train"]["anchor"]),
        "eval_triplets": len(config["eval"]["anchor"]),
        "num_workers": world,
        "global_batch_size": config["batch_size"],
        "per_device_batch_size": config["batch_size"] // world,
        "gather_across_devices": gather,
        "epochs": config["epochs"],
        "steps_per_epoch": steps_per_epoch,
        "steps": steps,
        "lr": config["lr"],
        "seed": config["seed"],
        "precision": precision,
        "max_seq_length": config["max_seq_length"],
        "head_init": config["head_init"],
        "normalize_output": config["normalize_output"],
        "eval_set": _eval_set(config),
        "mining": config.get("mining"),
        "loss": state["loss"],
        "eval_base": state.get("eval_base"),
        "eval_before": state["eval_before"],
        "eval_epochs": state["eval_epochs"],
        "published_epoch": None,
        "eval_after": None,
        "attempts": state["attempts"],
        "last_attempt_train_s": train_s,
    }


def _eval_set(config: dict) -> dict | None:
    """What the held-out scores were measured on (None: nothing held out)."""
    retrieval = config["retrieval"]
    if retrieval is None:
        return None
    return {
        "source": retrieval.source,
        "queries": len(retrieval.queries),
        "corpus": len(retrieval.corpus),
        "similarity": "each model's own (eval_*.similarity)",
    }


def save_final(model, metrics: dict, path: str, config: dict) -> None:
    """A sentence-transformers dir (safetensors, README model card) plus training_metrics.json."""
    model.save(path, safe_serialization=True)
    Path(path, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    columns = [metrics.get(k) or {} for k in ("eval_base", "eval_before", "eval_after")]
    rows = "\n".join(
        f"| {m} | " + " | ".join(f"{c.get(m, float('nan')):.4f}" for c in columns) + " |"
        for m in EVAL_METRICS
    )
    first = metrics["loss"][0]["loss"] if metrics["loss"] else float("nan")
    last = metrics["loss"][-1]["loss"] if metrics["loss"] else float("nan")
    head = {
        "preserve": "initialised to keep the base's cosines (identity or semi-orthogonal)",
        "random": "nn.Linear's random init, as the seed",
    }[metrics["head_init"]]
    eval_set = metrics["eval_set"] or {}
    unit = " (unit vectors: the same ranking as cosine)" if metrics["normalize_output"] else ""
    normalize = ", Normalize" if metrics["normalize_output"] else ""
    card = f"""

## Fine-tuning (fashion-batch train)

The seed recipe on `{config["base_model"]}`: Transformer, mean Pooling, Dense(→768, no bias,
Identity; {head}){normalize}; MultipleNegativesRankingLoss (scale {MNRL_SCALE}, cos_sim) over
NO_DUPLICATES batches.

- global batch {metrics["global_batch_size"]} = {metrics["num_workers"]} worker(s) ×
  {metrics["per_device_batch_size"]}, negatives gathered across workers:
  {metrics["gather_across_devices"]}
- {metrics["epochs"]} epochs, {metrics["steps"]} steps, lr {metrics["lr"]} with linear decay
  and no warm-up, seed {metrics["seed"]}, {metrics["precision"]}
- similarity for users: dot product{unit}
- training loss {first:.4f} at step 1, {last:.4f} at step {metrics["steps"]}
- published: epoch {metrics["published_epoch"]}, the best by held-out NDCG@10

Held-out retrieval ({eval_set.get("source")}: {eval_set.get("queries")} queries against
{eval_set.get("corpus")} documents, each model ranking by its own similarity function): the base
model as published, the seed architecture at step 0, and the published epoch:

| metric | base | step 0 | fine-tuned |
|---|---|---|---|
{rows}

Per-step losses and every epoch's evaluation: `{METRICS_FILE}`.
"""
    with open(os.path.join(path, "README.md"), "a", encoding="utf-8") as f:
        f.write(card)


def summary(metrics: dict) -> str:
    """A few lines for the terminal: loss first → last, eval before → after."""
    losses = metrics["loss"]
    lines = [
        f"trained {metrics['steps']} steps on {metrics['train_triplets']} triplets "
        f"({metrics['num_workers']} workers × {metrics['per_device_batch_size']}, "
        f"gather={metrics['gather_across_devices']}, {metrics['precision']})",
    ]
    if losses:
        lines.append(
            f"loss {losses[0]['loss']:.4f} (step {losses[0]['step']}) → "
            f"{losses[-1]['loss']:.4f} (step {losses[-1]['step']})"
        )
    base, before, after = (metrics.get(k) for k in ("eval_base", "eval_before", "eval_after"))
    if before and after:
        lines.append(
            f"held-out retrieval ({metrics['eval_set']['source']}, "
            f"{metrics['eval_set']['queries']} queries, {metrics['eval_set']['corpus']} docs): "
            f"base → step 0 → published epoch {metrics['published_epoch']}"
        )
        for m in EVAL_METRICS:
            lead = f"{base[m]:.4f} → " if base else ""
            lines.append(f"{m:>10}  {lead}{before[m]:.4f} → {after[m]:.4f}")
    gate = metrics.get("gate")
    if gate:
        lines.append(f"quality gate: {gate['verdict']}")
    return "\n".join(lines)
