"""Checkpoints of a training run, and the injected failure that tests resuming from them.

Checkpoints go through `ray.train.report`: rank 0 writes, every rank calls report the same number
of times (it is a barrier). A checkpoint holds the weights (safetensors); the optimiser,
scheduler, grad-scaler state and trainer state in `SentenceTransformerTrainer`'s own files; the
position (epoch, batch within epoch, step, loss log, held-out scores) and, when an earlier epoch
scored best on the held-out set, that epoch's weights (`best.safetensors`). A worker failure with
`max_failures >= 1`, or re-running with the same `storage_path` + `name`, continues from the
last checkpoint: each rank copies it into its own dir and hands it to
`trainer.train(resume_from_checkpoint=...)`, which restores the weights, optimiser, scheduler and
step and skips the batches already done (the sampler is deterministic per epoch). The last
checkpoint of a finished run holds the final model (`model/`) and is marked done.

A non-finite loss stops every rank at the same step with nothing reported after it, so the last
checkpoint stays the last good one; rank 0 leaves a stop record in the run dir for the driver.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from fashion_batch.io.fs import filesystem
from fashion_batch.train.card import save_final
from fashion_batch.train.config import STOP_FILE
from fashion_batch.train.model import Training
from fashion_batch.train.trainer import WEIGHTS

log = logging.getLogger(__name__)
BEST_WEIGHTS = "best.safetensors"  # the best epoch's weights, when a later epoch is checkpointed


def initial_state() -> dict:
    """The position of a run that has not trained yet; checkpoints save and restore it."""
    return {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "loss": [],
        "eval_base": None,
        "eval_before": None,
        "eval_epochs": [],  # held-out scores after each epoch (rank 0)
        "best": None,  # {"epoch", "step", "ndcg@10"} of the best epoch so far
        "batches": [],  # per epoch drawn: batches and the sampler's deferrals (batches.py)
        "attempts": [],
    }


def report_checkpoint(rank: int, trainer, training: Training, state: dict) -> None:
    """Every rank reports (a barrier); only rank 0 writes the checkpoint, so nothing races on
    a shared directory."""
    import ray.train

    metrics = {"step": state["step"], "loss": state["loss"][-1]["loss"] if state["loss"] else None}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            write_checkpoint(tmp, trainer, training, state)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def write_checkpoint(directory: str, trainer, training: Training, state: dict) -> None:
    """The weights, the best epoch's weights (if another epoch's), `state.json`, and what the
    trainer's own resume reads (`trainer_state.json`, `optimizer.pt`, `scheduler.pt`,
    `scaler.pt` in fp16), written by the trainer's own savers."""
    from safetensors.torch import save_file, save_model
    from transformers.trainer import TRAINER_STATE_NAME

    save_model(training.model, os.path.join(directory, WEIGHTS))
    if state["best"] and state["best"]["step"] != state["step"]:
        save_file(training.best, os.path.join(directory, BEST_WEIGHTS))
    trainer._save_optimizer_and_scheduler(directory)
    trainer._save_scaler(directory)
    trainer.state.save_to_json(os.path.join(directory, TRAINER_STATE_NAME))
    Path(directory, "state.json").write_text(json.dumps(state))


def restore(
    checkpoint, training: Training, local_dir: str, config: dict
) -> tuple[dict, str | None]:
    """(position, dir to resume the trainer from) of the last checkpoint, copied into this
    rank's own `local_dir`; (initial position, None) without one. The trainer loads the weights,
    optimiser, scheduler and scaler from that dir when `train(resume_from_checkpoint=...)` starts
    and skips the batches already done; here only the best epoch's weights are loaded.

    A finished run's checkpoint is returned as it is (marked `done`), with no dir.
    """
    if checkpoint is None:
        return initial_state(), None
    from safetensors.torch import load_file

    d = checkpoint.to_directory(local_dir)
    restored = {**initial_state(), **json.loads(Path(d, "state.json").read_text())}
    if restored.get("done"):
        return restored, None
    best = os.path.join(d, BEST_WEIGHTS)
    if os.path.exists(best):
        training.best = load_file(best, device="cpu")
    elif restored.get("best"):  # the checkpoint's own weights are the best so far
        training.best = load_file(os.path.join(d, WEIGHTS), device="cpu")
    log.info("resuming %s at step %d", config["name"], restored["step"])
    return restored, d


def report_final(rank: int, training: Training, metrics: dict, state: dict, config: dict) -> None:
    """The last report of a run: rank 0 saves the final model into it (`model/`) and marks the
    position done, so a re-run publishes it again instead of training."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_final(training.model, training.loss, metrics, os.path.join(tmp, "model"), config)
            Path(tmp, "state.json").write_text(json.dumps({**state, "done": True}))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"step": metrics["steps"], "done": True}, checkpoint=checkpoint)


def fail_once(marker: str, step: int) -> None:
    """Testing fault tolerance: raise the first time this step is reached, never again."""
    if os.path.exists(marker):
        return
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    Path(marker).write_text(str(step))
    raise RuntimeError(f"injected worker failure after step {step} (--fail-at-step)")


class NonFiniteLoss(RuntimeError):
    """Training stopped at a NaN/inf loss (or fp32 gradient norm); nothing was published."""


def record_stop(config: dict, step: int, what: str, value: float | str) -> None:
    """Rank 0 says why the workers stopped early: a run that ends without its final report
    looks finished to Ray Train, and `Result` carries only the metrics of checkpoints."""
    fs, root = filesystem(config["storage_path"])
    with fs.open_output_stream(posixpath.join(root, config["name"], STOP_FILE)) as f:
        f.write(json.dumps({"step": step, "what": what, "value": str(value)}).encode())


def take_stop_record(storage_path: str, name: str) -> dict | None:
    """The record `record_stop` left in the run dir, if any, removed as it is read."""
    fs, root = filesystem(storage_path)
    path = posixpath.join(root, name, STOP_FILE)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        record = json.loads(f.read().decode())
    fs.delete_file(path)
    return record
