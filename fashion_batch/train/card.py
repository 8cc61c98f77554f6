"""What a finished run tells its users: `training_metrics.json`, the sentence-transformers model
card (README.md), the TensorBoard log and loss plot (train/record.py), the terminal summary.

The card is sentence-transformers' own (`SentenceTransformerModelCardData`, rendered by
`model.save`); the trainer's model card callback fills it during an attempt, and rank 0 then
fills from the run's record, over every attempt, the fields that callback would (base model,
the training set's size, columns and statistics, the loss and its parameters, every
hyper-parameter, the training log with each epoch's held-out NDCG@10, the held-out metrics of
the base, the step-0 model and the published epoch), and a short fashion-batch section follows
it: the head, the published epoch and the batching and mining counts.

The final model is written by rank 0 into the last checkpoint (`model/`: a normal
sentence-transformers dir, safetensors only, model card, `training_metrics.json`, `runs/`,
`training_loss.png`) and the driver copies it to OUTPUT, so OUTPUT is on the driver's machine
even when rank 0 runs on another node.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from fashion_batch.train.batches import product_groups
from fashion_batch.train.config import MAX_GRAD_NORM, METRICS_FILE, MNRL_SCALE, TrainConfig
from fashion_batch.train.data import triplets_dataset
from fashion_batch.train.record import (
    EVAL_METRICS,
    PLOT_FILE,
    RUNS_DIR,
    plot_training,
    write_tensorboard,
)

# The settings that change what is trained, by their TrainConfig names (the card lists them all
# and, apart, those that differ from the seed recipe's defaults).
HYPERPARAMETERS = (
    "num_workers",
    "batch_size",
    "epochs",
    "lr",
    "seed",
    "max_seq_length",
    "head_init",
    "normalize_output",
    "gather_across_devices",
    "logging_steps",
    "checkpoint_steps",
    "eval_split",
    "gate_margin",
    "mine_catalog",
    "mine_range",
    "mine_skip",
    "mine_max_similarity",
)
# The recipe's fixed parts, which no flag changes (trainer.py, model.py).
RECIPE = {
    "optimizer": "AdamW",
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "max_grad_norm": MAX_GRAD_NORM,
    "batch_sampler": "no_duplicates, one triplet per product (train/batches.py)",
    "dataloader_drop_last": True,
}
NDCG_COLUMN = "held-out NDCG@10"
EVAL_NAMES = (("eval_base", "base"), ("eval_before", "step_0"), ("eval_after", "fine_tuned"))


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
        state: the run's position: loss log, evaluations before training, attempts, what the
            sampler deferred in each epoch.
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
        "batching": {**product_groups(config["train"]["positive"]), "epochs": state["batches"]},
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


def save_final(model, loss, metrics: dict, path: str, config: dict) -> None:
    """A sentence-transformers dir (safetensors, README model card) plus training_metrics.json,
    the TensorBoard log under `runs/` and `training_loss.png`."""
    fill_card_data(model, loss, metrics, config)
    model.save(path, safe_serialization=True)
    Path(path, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    write_tensorboard(metrics, os.path.join(path, RUNS_DIR))
    Path(path, PLOT_FILE).write_bytes(plot_training(metrics))
    with open(os.path.join(path, "README.md"), "a", encoding="utf-8") as f:
        f.write(_fashion_section(metrics, config))


def fill_card_data(model, loss, metrics: dict, config: dict) -> None:
    """Fill `model.model_card_data` the way `SentenceTransformerTrainer`'s callbacks would, from
    the run's own record (every attempt, not only the last one); nothing is looked up on the
    Hub."""
    card = model.model_card_data
    card.local_files_only = True
    card.model_name = f"fashion-batch fine-tune of {config['base_model']}"
    card.base_model = _hub_id(config["base_model"])
    card.ir_model = True
    train = config["train"]
    card.usage_examples = [train[c][0] for c in ("anchor", "positive", "negative")]
    card.set_losses([loss])
    card.add_tags(f"dataset_size:{len(train['anchor'])}")
    card.train_datasets = [
        card.compute_dataset_metrics(
            triplets_dataset(train, "triplets"), {"name": "triplets"}, loss
        )
    ]
    held_out = config["eval"]
    if held_out["anchor"]:
        card.eval_datasets = [
            card.compute_dataset_metrics(
                triplets_dataset(held_out, "held-out"), {"name": "held-out"}, loss
            )
        ]
    card.all_hyperparameters = hyperparameters(metrics, config)
    card.non_default_hyperparameters = non_default(config)
    card.training_logs = training_logs(metrics)
    published = next(
        (e["step"] for e in metrics["eval_epochs"] if e["epoch"] == metrics["published_epoch"]),
        None,
    )
    card.set_best_model_step(published)
    card.eval_results_dict = _eval_results(metrics, config["retrieval"])


def _hub_id(base: str) -> str | None:
    """The base's Hub id, for the card's link: `builtin:minilm` is all-MiniLM-L6-v2's weights; a
    local dir has none."""
    from fashion_batch.encoders.models import BUILTIN_MINILM

    if base == BUILTIN_MINILM:
        return "sentence-transformers/all-MiniLM-L6-v2"
    if os.path.exists(base) or base.count("/") != 1:
        return None
    return base


def hyperparameters(metrics: dict, config: dict) -> dict:
    """Every setting of the run: the flags that shape training, the resolved batch split and
    step counts, and the recipe's fixed parts."""
    return {
        **{k: config.get(k) for k in HYPERPARAMETERS},
        "per_device_batch_size": metrics["per_device_batch_size"],
        "steps_per_epoch": metrics["steps_per_epoch"],
        "steps": metrics["steps"],
        "precision": metrics["precision"],
        "gather_across_devices": metrics["gather_across_devices"],
        **RECIPE,
    }


def non_default(config: dict) -> dict:
    """The settings that differ from the seed recipe (TrainConfig's defaults)."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    defaults["gather_across_devices"] = config["num_workers"] > 1  # what None resolves to
    return {k: config.get(k) for k in HYPERPARAMETERS if config.get(k) != defaults[k]}


def training_logs(metrics: dict) -> list[dict]:
    """The card's training log: the loss at every logging step and the held-out NDCG@10 at
    step 0 and at the end of every epoch, one row per step."""
    rows = {
        e["step"]: {"Epoch": e["epoch"], "Step": e["step"], "Training Loss": e["loss"]}
        for e in metrics["loss"]
    }
    scores = [(0, 0, metrics.get("eval_before"))]
    scores += [(e["epoch"], e["step"], e) for e in metrics["eval_epochs"]]
    for epoch, step, entry in scores:
        if entry:
            rows.setdefault(step, {"Epoch": epoch, "Step": step})[NDCG_COLUMN] = entry["ndcg@10"]
    return [rows[step] for step in sorted(rows)]


def _eval_results(metrics: dict, retrieval) -> dict:
    """One sentence-transformers `InformationRetrievalEvaluator` per model scored (named base,
    step_0, fine_tuned: the card puts them side by side in one table), with its scores."""
    if retrieval is None:
        return {}
    results = {}
    for key, name in EVAL_NAMES:
        scores = metrics.get(key)
        if scores:
            evaluator = retrieval.evaluator(name=name)
            evaluator.primary_metric = "ndcg@10"
            results[evaluator] = {m: scores[m] for m in EVAL_METRICS}
    return results


def _fashion_section(metrics: dict, config: dict) -> str:
    head = {
        "preserve": "initialised to keep the base's cosines (identity or semi-orthogonal)",
        "random": "nn.Linear's random init, as the seed",
    }[metrics["head_init"]]
    eval_set = metrics["eval_set"] or {}
    unit = " (unit vectors: the same ranking as cosine)" if metrics["normalize_output"] else ""
    normalize = ", Normalize" if metrics["normalize_output"] else ""
    batching = metrics["batching"]
    deferred = sum(e["deferred_same_product"] for e in batching["epochs"])
    mining = metrics.get("mining")
    mined = (
        f"- hard negatives mined from the catalog for {mining['mined']} of {mining['triplets']} "
        f"triplets; candidates removed by each filter: {mining['removed']}\n"
        if mining
        else ""
    )
    return f"""

## Fine-tuning (fashion-batch train)

The seed recipe on `{config["base_model"]}`: Transformer, mean Pooling, Dense(→768, no bias,
Identity; {head}){normalize}; MultipleNegativesRankingLoss (scale {MNRL_SCALE}, cos_sim).

- global batch {metrics["global_batch_size"]} = {metrics["num_workers"]} worker(s) ×
  {metrics["per_device_batch_size"]}, negatives gathered across workers:
  {metrics["gather_across_devices"]}
- batches: no repeated text and at most one triplet per product
  ({batching["products"]} products, {batching["triplets_sharing_a_product"]} triplets share
  theirs; {deferred} draws deferred for a product already in the batch)
{mined}- similarity for users: dot product{unit}
- published: epoch {metrics["published_epoch"]}, the best by held-out NDCG@10
  ({eval_set.get("source")}: {eval_set.get("queries")} queries against {eval_set.get("corpus")}
  documents; columns base, step_0, fine_tuned of the evaluation table above)

Per-step losses and every epoch's evaluation: `{METRICS_FILE}`; TensorBoard: `{RUNS_DIR}/`;
plot: `{PLOT_FILE}`.
"""


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
