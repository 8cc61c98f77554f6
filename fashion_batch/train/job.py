"""`fashion-batch train`: the seed fine-tune (MNRL over triplets) on N Ray Train workers.

Launch (see also `jobs/finetune.py` for `ray job submit`):

    fashion-batch train --triplets data/triplets/ --output models/fashion-seed             # 2 CPUs
    fashion-batch train --triplets s3://b/triplets/ --output /mnt/models/seed \
        --num-workers 4 --use-gpu                                                          # 4 GPUs

Why a plain PyTorch loop and not `SentenceTransformerTrainer` under Ray: with the HF Trainer the
batch sampler is built with the *per-device* batch size and accelerate then deals whole batches
round-robin to the ranks, so NO_DUPLICATES only holds within each rank's 8 rows, never across the
global 16 that a gathering loss sees, and 1×16 and 2×8 train on different batches. Resuming goes
through HF's own checkpoint dirs, which `RayTrainReportCallback` copies while rank 0 may still be
writing them (design.md pitfall). The loop here is ~100 lines that own both: it builds the seed
model (`build_seed_model`), the library's `MultipleNegativesRankingLoss` and
`NoDuplicatesBatchSampler`, and the seed's optimiser settings (AdamW, lr 5e-5, weight decay 0,
max grad norm 1, linear decay without warm-up, seed 42; fp16 autocast only on CUDA).

Sharding: every rank draws the same *global* batches from one `NoDuplicatesBatchSampler` (global
batch size, seed + epoch) and keeps the contiguous slice `rows[r*b:(r+1)*b]`, b = batch_size //
world_size. With `gather_across_devices` MNRL all-gathers in rank order, so rank r's anchors meet
exactly the 16 positives and 16 negatives a single process would see; DDP averages the gradients,
which equals the gradient of the single-process mean loss. So 2×8 and 1×16 train the same model
(tests check the losses agree to 1e-4). `drop_last` is always on: all_gather needs equal shapes,
and every worker count then runs the same number of steps.

Resume: checkpoints go through `ray.train.report` (rank 0 writes, every rank calls report the same
number of times: it is a barrier). A checkpoint holds the weights (safetensors), optimiser,
scheduler and grad-scaler state, and the position (epoch, batch within epoch, step, loss log). A
worker failure with `max_failures >= 1`, or re-running with the same `storage_path` + `name`,
continues from the last checkpoint: the sampler is deterministic per epoch, so the loop skips the
batches already done. `storage_path` defaults to `ray_results/` beside OUTPUT and `name` to
`finetune-<basename of OUTPUT>`, so re-running the same command resumes; `run.json` in the run dir
records what the run trains (data digest + hyper-parameters) and a re-run that differs is refused.

The final model is written by rank 0 into the last checkpoint (`model/`: a normal
sentence-transformers dir, safetensors only, model card, `training_metrics.json`) and the driver
copies it to OUTPUT, so OUTPUT is on the driver's machine even when rank 0 runs on another node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.json as pajson

from fashion_batch.encoders.models import SEED_BASE_MODEL
from fashion_batch.errors import InputError
from fashion_batch.io.fs import filesystem
from fashion_batch.options import option

log = logging.getLogger(__name__)

COLUMNS = ("anchor", "positive", "negative")
SEED_COLUMNS = ("sentence_0", "sentence_1", "sentence_2")  # the seed's dataset names
METRICS_FILE = "training_metrics.json"
RUN_FILE = "run.json"
MNRL_SCALE = 20.0
MAX_GRAD_NORM = 1.0
EVAL_K = 10


@dataclass
class TrainConfig:
    """Settings of `fashion-batch train`; the defaults are the seed recipe.

    Args:
        triplets: Parquet file/dir or JSONL (local or s3://) with anchor, positive, negative
            (sentence_0/1/2 are renamed).
        output: local directory for the trained sentence-transformers model.
        base_model: local dir, hub id or `builtin:minilm`; the seed head goes on top.
        num_workers: Ray Train workers (one per GPU with `use_gpu`).
        use_gpu: one GPU per worker, fp16 autocast.
        epochs: passes over the training triplets.
        batch_size: GLOBAL batch; each worker takes batch_size // num_workers rows.
        lr: peak learning rate (linear decay to 0, no warm-up).
        seed: model init, sampler order and train/eval split.
        eval_split: share of distinct anchors held out for evaluation (0: no evaluation).
        eval_triplets: held-out triplets to evaluate on instead of splitting `triplets`.
        storage_path: Ray Train storage (checkpoints); default `ray_results/` beside OUTPUT.
            Must be shared storage (NFS, s3://) for multi-node runs.
        name: run name under storage_path; default `finetune-<basename of OUTPUT>`.
        max_failures: worker-group restarts from the last checkpoint before giving up.
        logging_steps: record the mean loss every this many steps (and at step 1).
        checkpoint_steps: checkpoint every this many steps; default once per epoch.
        max_seq_length: tokens per text; longer texts are truncated.
        gather_across_devices: MNRL negatives from all workers; None = on when num_workers > 1.
        cpus_per_worker: CPUs reserved per worker (also torch threads on CPU).
        fail_at_step: testing only: rank 0 raises once after this step (marker in the run dir).
    """

    triplets: str = option(help="Parquet file/dir or JSONL; local or s3://")
    output: str = option(help="local dir for the trained model")
    base_model: str = option(SEED_BASE_MODEL, help="dir, hub id or builtin:minilm")
    num_workers: int = option(2, help="Ray Train workers")
    use_gpu: bool = option(False, help="one GPU per worker, fp16")
    epochs: int = option(10, help="passes over the training triplets")
    batch_size: int = option(16, help="GLOBAL batch size")
    lr: float = option(5e-5, help="peak learning rate")
    seed: int = option(42, help="model init, sampler order and train/eval split")
    eval_split: float = option(0.2, help="share of anchors held out")
    eval_triplets: str | None = option(None, help="held-out triplets instead of --eval-split")
    storage_path: str | None = option(
        None, help="Ray Train storage; default: ray_results/ beside OUTPUT"
    )
    name: str | None = option(None, help="run name; same storage path + name resumes")
    max_failures: int = option(0, help="restarts from last checkpoint")
    logging_steps: int = option(10, help="record the mean loss every this many steps")
    checkpoint_steps: int | None = option(None, help="default: once per epoch")
    max_seq_length: int = option(512, help="tokens per text; longer texts are truncated")
    gather_across_devices: bool | None = option(
        None,
        negatable=True,
        help="MNRL negatives from all workers (default: on with more than one worker)",
    )
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker")
    fail_at_step: int | None = option(None, hidden=True, help="testing only")

    def __post_init__(self):
        if not self.triplets:
            raise InputError("--triplets must name a file or directory")
        if not self.output or "://" in self.output:
            raise InputError(f"--output must be a local directory, got {self.output!r}")
        positive = dict(
            num_workers=self.num_workers,
            epochs=self.epochs,
            batch_size=self.batch_size,
            logging_steps=self.logging_steps,
            max_seq_length=self.max_seq_length,
        )
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value}")
        if self.batch_size % self.num_workers:
            raise InputError(
                f"--batch-size {self.batch_size} is the global batch and must be divisible by "
                f"--num-workers {self.num_workers}"
            )
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.eval_split < 1:
            raise InputError(f"--eval-split must be in [0, 1), got {self.eval_split}")
        if self.max_failures < -1:
            raise InputError(
                f"--max-failures must be >= -1 (-1: retry forever), got {self.max_failures}"
            )
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise InputError(f"--checkpoint-steps must be >= 1, got {self.checkpoint_steps}")
        if not self.cpus_per_worker > 0:
            raise InputError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        output = Path(self.output).expanduser().resolve()
        self.output = str(output)
        if self.storage_path is None:
            self.storage_path = str(output.parent / "ray_results")
        elif "://" not in self.storage_path:
            self.storage_path = str(Path(self.storage_path).expanduser().resolve())
        if self.name is None:
            self.name = f"finetune-{output.name}"
        if not self.name or "/" in self.name:
            raise InputError(f"--name must be a plain directory name, got {self.name!r}")
        if self.fail_at_step is not None and self.fail_at_step < 1:
            raise InputError(f"--fail-at-step must be >= 1, got {self.fail_at_step}")
        if self.fail_at_step is not None and "://" in self.storage_path:
            raise InputError("--fail-at-step needs a local --storage-path (it leaves a marker)")

    @property
    def per_device_batch_size(self) -> int:
        return self.batch_size // self.num_workers


# ---------------------------------------------------------------------------- data


def read_triplets(uri: str, flag: str = "--triplets") -> dict[str, list[str]]:
    """Read (anchor, positive, negative) columns from Parquet (file or dir) or JSONL.

    Rows with a null or blank text in any column are dropped. Raises InputError naming the path
    and the column when the input is missing, unreadable or lacks a column.
    """
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{flag} {uri}: no such file or directory")
    try:
        if info.type == pafs.FileType.File and path.endswith((".jsonl", ".json")):
            with fs.open_input_stream(path) as f:
                table = pajson.read_json(f)
        else:
            table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{flag} {uri}: not readable as Parquet or JSONL: {e}") from e
    names = table.schema.names
    if not set(COLUMNS) <= set(names) and set(SEED_COLUMNS) <= set(names):
        table = table.select(list(SEED_COLUMNS)).rename_columns(list(COLUMNS))
    for column in COLUMNS:
        if column not in table.schema.names:
            raise InputError(
                f"{flag} {uri}: missing column {column!r} (has: {', '.join(names)}); "
                "needs anchor, positive, negative (or sentence_0, sentence_1, sentence_2)"
            )
        if not pa.types.is_string(table.schema.field(column).type) and not pa.types.is_large_string(
            table.schema.field(column).type
        ):
            raise InputError(
                f"{flag} {uri}: column {column!r} is {table.schema.field(column).type}, "
                "needs strings"
            )
    data = table.select(list(COLUMNS)).to_pydict()
    keep = [
        i
        for i in range(table.num_rows)
        if all(data[c][i] is not None and data[c][i].strip() for c in COLUMNS)
    ]
    if len(keep) < table.num_rows:
        log.warning(
            "%s %s: dropped %d rows with an empty text", flag, uri, table.num_rows - len(keep)
        )
    if not keep:
        raise InputError(f"{flag} {uri}: no triplet with three non-empty texts")
    return {c: [data[c][i] for i in keep] for c in COLUMNS}


def split_triplets(
    data: dict[str, list[str]], eval_split: float, seed: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, eval): a seeded share of the distinct anchors, with all their rows, is held out,
    so no query is both trained on and evaluated."""
    import numpy as np

    anchors = list(dict.fromkeys(data["anchor"]))
    n_eval = round(eval_split * len(anchors))
    if eval_split > 0 and len(anchors) > 1:
        n_eval = min(max(n_eval, 1), len(anchors) - 1)
    rng = np.random.default_rng(seed)
    held_out = {anchors[i] for i in rng.permutation(len(anchors))[:n_eval]}
    is_eval = [a in held_out for a in data["anchor"]]

    def pick(held: bool) -> dict[str, list[str]]:
        return {c: [v for v, e in zip(data[c], is_eval, strict=True) if e == held] for c in COLUMNS}

    return pick(False), pick(True)


def shard(global_batch: list[int], rank: int, world_size: int) -> list[int]:
    """Rank r's rows of one global batch: the r-th contiguous slice, in order. All-gathering
    the slices in rank order gives back the global batch, as one process would see it."""
    per_rank = len(global_batch) // world_size
    return global_batch[rank * per_rank : (rank + 1) * per_rank]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- the worker loop


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: MNRL fine-tune on this rank's slice of every global batch."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim
    from transformers import get_linear_schedule_with_warmup, set_seed

    from fashion_batch.encoders.models import build_seed_model

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    use_amp = device.type == "cuda"  # fp16 only on GPU: on CPU it is slow or refused
    distributed = dist.is_available() and dist.is_initialized() and world > 1

    # [1] Prepare data: identical global batches on every rank, each rank keeps its slice.
    train = config["train"]
    sampler = NoDuplicatesBatchSampler(
        _Rows(train),
        batch_size=config["batch_size"],
        drop_last=True,
        generator=torch.Generator(),
        seed=config["seed"],
    )
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * config["epochs"]
    checkpoint_steps = config["checkpoint_steps"] or steps_per_epoch

    # [2] Prepare model: seed architecture, loss, optimiser; restore the last checkpoint if any.
    set_seed(config["seed"])
    model = build_seed_model(config["base_model"], max_seq_length=config["max_seq_length"])
    model.to(device)
    gather = bool(config["gather_across_devices"]) and world > 1
    loss_fn = MultipleNegativesRankingLoss(
        model, scale=MNRL_SCALE, similarity_fct=cos_sim, gather_across_devices=gather
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    state = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "loss": [],
        "eval_base": None,
        "eval_before": None,
        "attempts": [],
    }
    state = _restore(ray.train.get_checkpoint(), model, optimizer, scheduler, scaler, state, config)
    if state.get("done"):
        return  # a re-run of a finished run: its last checkpoint already holds the model
    state["attempts"].append({"start_step": state["step"], "world_size": world})
    if rank == 0 and state["eval_before"] is None and config["eval"]["anchor"]:
        # Two baselines: the base as published (its own pooling/normalisation: what a user would
        # get without training) and the seed architecture before its first step (random head).
        state["eval_base"] = _evaluate_base(config["base_model"], device, config["eval"])
        state["eval_before"] = _evaluate(model, config["eval"])
    # The pooler of BERT-style bases is never used by mean pooling: DDP must not wait for it.
    ddp_loss = ray.train.torch.prepare_model(
        loss_fn, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
    )

    # [3] Train
    model.train()
    started = time.time()
    window_sum = torch.zeros((), device=device)  # local loss summed since the last log
    window_n = 0
    step = state["step"]
    for epoch in range(state["epoch"], config["epochs"]):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        first = state["batch"] if epoch == state["epoch"] else 0
        for b in range(first, len(batches)):
            rows = shard(batches[b], rank, world)
            features = [
                _to_device(model.preprocess([train[c][i] for i in rows]), device) for c in COLUMNS
            ]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = ddp_loss(features, None)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_sum += loss.detach().float()
            window_n += 1
            if step == 1 or step % config["logging_steps"] == 0 or step == total_steps:
                if distributed:  # every rank logs at the same steps, so this collective matches
                    dist.all_reduce(window_sum)
                state["loss"].append(
                    {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 4),
                        "loss": float(window_sum) / world / window_n,  # mean over ranks and steps
                        "lr": scheduler.get_last_lr()[0],
                    }
                )
                window_sum.zero_()
                window_n = 0
            position = (epoch, b + 1) if b + 1 < len(batches) else (epoch + 1, 0)
            state.update(step=step, epoch=position[0], batch=position[1])
            if step % checkpoint_steps == 0 and step < total_steps:
                _report_checkpoint(rank, model, optimizer, scheduler, scaler, state)
            if rank == 0 and step == config["fail_at_step"]:
                _fail_once(config["fail_marker"], step)

    # [4] Report: rank 0 evaluates, saves the final model into the last checkpoint.
    metrics = {
        "base_model": config["base_model"],
        "train_triplets": len(train["anchor"]),
        "eval_triplets": len(config["eval"]["anchor"]),
        "num_workers": world,
        "global_batch_size": config["batch_size"],
        "per_device_batch_size": config["batch_size"] // world,
        "gather_across_devices": gather,
        "epochs": config["epochs"],
        "steps_per_epoch": steps_per_epoch,
        "steps": step,
        "lr": config["lr"],
        "seed": config["seed"],
        "precision": "fp16" if use_amp else "fp32",
        "max_seq_length": config["max_seq_length"],
        "loss": state["loss"],
        "eval_base": state.get("eval_base"),
        "eval_before": state["eval_before"],
        "eval_after": None,
        "attempts": state["attempts"],
        "last_attempt_train_s": round(time.time() - started, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            model.eval()
            if config["eval"]["anchor"]:
                metrics["eval_after"] = _evaluate(model, config["eval"])
            _save_final(model, metrics, os.path.join(tmp, "model"), config)
            Path(tmp, "state.json").write_text(json.dumps({**state, "done": True}))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"step": step, "done": True}, checkpoint=checkpoint)


class _Rows:
    """The little of a `datasets.Dataset` that `NoDuplicatesBatchSampler` reads: column names,
    length, row dicts (building a real Dataset costs seconds per worker and fingerprints)."""

    def __init__(self, columns: dict[str, list[str]]):
        self.columns = columns
        self.column_names = list(columns)

    def __len__(self) -> int:
        return len(self.columns[self.column_names[0]])

    def __getitem__(self, index: int) -> dict[str, str]:
        return {c: values[index] for c, values in self.columns.items()}


def _to_device(features: dict, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}


def _evaluate(model, data: dict[str, list[str]]) -> dict[str, float]:
    from fashion_batch.evaluate import evaluate_triplets

    return evaluate_triplets(model, data["anchor"], data["positive"], k=EVAL_K)


def _evaluate_base(base_model: str, device, data: dict[str, list[str]]) -> dict[str, float]:
    from fashion_batch.encoders.models import load_model

    base = load_model(base_model, device=str(device), precision="fp32")
    try:
        return _evaluate(base, data)
    finally:
        del base


def _report_checkpoint(rank, model, optimizer, scheduler, scaler, state) -> None:
    """Every rank reports (a barrier); only rank 0 writes the checkpoint, so nothing races on
    a shared directory."""
    import ray.train
    import torch
    from safetensors.torch import save_model

    metrics = {"step": state["step"], "loss": state["loss"][-1]["loss"] if state["loss"] else None}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_model(model, os.path.join(tmp, "weights.safetensors"))
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                },
                os.path.join(tmp, "trainer_state.pt"),
            )
            Path(tmp, "state.json").write_text(json.dumps(state))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _restore(checkpoint, model, optimizer, scheduler, scaler, state: dict, config: dict) -> dict:
    """Load weights, optimiser/scheduler/scaler state and position from a checkpoint (if any)."""
    if checkpoint is None:
        return state
    import torch
    from safetensors.torch import load_model

    with checkpoint.as_directory() as d:
        restored = json.loads(Path(d, "state.json").read_text())
        if restored.get("done"):
            return restored
        load_model(model, os.path.join(d, "weights.safetensors"), device=str(model.device))
        trainer_state = torch.load(
            os.path.join(d, "trainer_state.pt"), map_location=model.device, weights_only=True
        )
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    scaler.load_state_dict(trainer_state["scaler"])
    log.info("resuming %s at step %d", config["name"], restored["step"])
    return restored


def _fail_once(marker: str, step: int) -> None:
    """Testing fault tolerance: raise the first time this step is reached, never again."""
    if os.path.exists(marker):
        return
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    Path(marker).write_text(str(step))
    raise RuntimeError(f"injected worker failure after step {step} (--fail-at-step)")


def _save_final(model, metrics: dict, path: str, config: dict) -> None:
    """A sentence-transformers dir (safetensors, README model card) plus training_metrics.json."""
    model.save(path, safe_serialization=True)
    Path(path, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    columns = [metrics.get(k) or {} for k in ("eval_base", "eval_before", "eval_after")]
    rows = "\n".join(
        f"| {m} | " + " | ".join(f"{c.get(m, float('nan')):.4f}" for c in columns) + " |"
        for m in (f"ndcg@{EVAL_K}", f"mrr@{EVAL_K}", f"recall@{EVAL_K}")
    )
    first = metrics["loss"][0]["loss"] if metrics["loss"] else float("nan")
    last = metrics["loss"][-1]["loss"] if metrics["loss"] else float("nan")
    card = f"""

## Fine-tuning (fashion-batch train)

The seed recipe on `{config["base_model"]}`: Transformer, mean Pooling, Dense(→768, no bias,
Identity); MultipleNegativesRankingLoss (scale {MNRL_SCALE}, cos_sim) over NO_DUPLICATES batches.

- global batch {metrics["global_batch_size"]} = {metrics["num_workers"]} worker(s) ×
  {metrics["per_device_batch_size"]}, negatives gathered across workers:
  {metrics["gather_across_devices"]}
- {metrics["epochs"]} epochs, {metrics["steps"]} steps, lr {metrics["lr"]} with linear decay
  and no warm-up, seed {metrics["seed"]}, {metrics["precision"]}
- similarity for users: dot product
- training loss {first:.4f} at step 1, {last:.4f} at step {metrics["steps"]}

Held-out triplets ({metrics["eval_triplets"]} rows): the base model as published, the seed
architecture before training (untrained Dense head), and after fine-tuning:

| metric | base | seed arch, untrained | fine-tuned |
|---|---|---|---|
{rows}

Per-step losses and evaluation: `{METRICS_FILE}`.
"""
    with open(os.path.join(path, "README.md"), "a", encoding="utf-8") as f:
        f.write(card)


# ---------------------------------------------------------------------------- the driver


def _check_output(output: str) -> None:
    """OUTPUT may be missing, empty, or an earlier `train` output (replaced); nothing else."""
    path = Path(output)
    if path.exists() and (
        not path.is_dir() or (any(path.iterdir()) and not (path / METRICS_FILE).exists())
    ):
        raise InputError(
            f"--output {output}: exists and is not an earlier train output; choose another dir"
        )


def _claim_run(config: TrainConfig, fingerprint: dict) -> None:
    """Write run.json in the run dir, or check that an existing run trains the same thing:
    resuming someone else's checkpoints with other data or settings would be silently wrong."""
    fs, root = filesystem(config.storage_path)
    run_dir = posixpath.join(root, config.name)
    path = posixpath.join(run_dir, RUN_FILE)
    if fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            previous = json.loads(f.read().decode())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise InputError(
                f"run {config.name!r} in {config.storage_path} was started with other "
                f"{', '.join(changed)}; pass another --name to start a new run"
            )
        return
    fs.create_dir(run_dir, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(fingerprint, indent=2, sort_keys=True).encode())


def _publish(checkpoint, output: str) -> dict:
    """Copy the final checkpoint's model dir to OUTPUT (via a temporary name beside it)."""
    with checkpoint.as_directory() as d:
        source = Path(d, "model")
        if not (source / METRICS_FILE).exists():
            raise RuntimeError(f"the last checkpoint {checkpoint.path} holds no final model")
        tmp = f"{output}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, tmp)
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    return json.loads(Path(output, METRICS_FILE).read_text())


def _worker_env() -> dict[str, str]:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE")
    env = {k: os.environ[k] for k in names if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run(config: TrainConfig) -> dict:
    """Validate, launch the TorchTrainer, publish the model to OUTPUT; returns training_metrics."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fashion_batch.encoders.models import resolve_model

    # Everything that can be wrong with the input is found before anything is written.
    resolve_model(config.base_model, flag="--base-model")
    _check_output(config.output)
    data = read_triplets(config.triplets)
    if config.eval_triplets:
        train, held_out = data, read_triplets(config.eval_triplets, "--eval-triplets")
    else:
        train, held_out = split_triplets(data, config.eval_split, config.seed)
    if len(train["anchor"]) < config.batch_size:
        raise InputError(
            f"--triplets {config.triplets}: {len(train['anchor'])} training triplets, fewer than "
            f"one global batch of {config.batch_size}"
        )
    fingerprint = {
        "data": _digest([train, held_out]),
        **{
            k: getattr(config, k)
            for k in ("base_model", "epochs", "batch_size", "lr", "seed", "max_seq_length")
        },
    }
    _claim_run(config, fingerprint)

    gather = config.gather_across_devices
    loop_config = {
        **asdict(config),
        "gather_across_devices": config.num_workers > 1 if gather is None else gather,
        "train": train,
        "eval": held_out,
        "fail_marker": os.path.join(
            config.storage_path, config.name, f".injected-failure-{config.fail_at_step}"
        ),
    }
    resources = {"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})}
    if not ray.is_initialized():
        # With the dashboard (unlike embed.init_ray): Ray Train's PlacementGroupCleaner watches
        # the controller through the State API, which the dashboard serves.
        ray.init()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            storage_path=config.storage_path,
            name=config.name,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": _worker_env()},
        ),
    )
    result = trainer.fit()
    metrics = _publish(result.checkpoint, config.output)
    print(summary(metrics))
    return metrics


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
            f"held-out triplets ({metrics['eval_triplets']}): base model → untrained seed head → "
            "fine-tuned"
        )
        for m in (f"ndcg@{EVAL_K}", f"mrr@{EVAL_K}", f"recall@{EVAL_K}"):
            lead = f"{base[m]:.4f} → " if base else ""
            lines.append(f"{m:>10}  {lead}{before[m]:.4f} → {after[m]:.4f}")
    return "\n".join(lines)
