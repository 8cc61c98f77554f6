"""`train_loop_per_worker`: what each Ray Train worker runs, in numbered steps.

The training itself is sentence-transformers' `SentenceTransformerTrainer` (train/trainer.py):
the seed model from `build_seed_model`, `MultipleNegativesRankingLoss` gathering candidates
across workers, the seed's optimiser settings as training arguments (AdamW, weight decay 0, max
grad norm 1, linear decay without warm-up; fp16 only on CUDA), accelerate's DDP. The run's duties
during training are `TrainerCallback`s (train/callbacks.py): the sampler's epoch and what it drew,
the loss record and progress lines, each epoch's held-out evaluation and the best epoch, and the
checkpoints through `ray.train.report` from rank 0. Around `trainer.train()` this function keeps
what happens once per attempt: restoring the last checkpoint, recording the attempt, the base and
step-0 evaluations, and the final report with the published epoch's model.

Sharding: the trainer gets one sampler of *global* batches (`NoDuplicatesBatchSampler` under
`batches.ProductBatchSampler`, global batch size, seed + epoch) and, with
`accelerator_config={"split_batches": True}`, accelerate gives rank r the contiguous slice
`rows[r*b:(r+1)*b]`, b = batch_size // world_size (`data.shard`). With `gather_across_devices`
MNRL all-gathers in rank order, so rank r's anchors meet exactly the positives and negatives a
single process would see; DDP averages the gradients, which equals the gradient of the
single-process mean loss. So 2×8 and 1×16 train the same model (the tests check that their
losses agree step by step).

A NaN/inf loss stops the run: each step's loss is averaged over the ranks before the backward
pass (the trainer's `compute_loss`, overridden: no callback sees the loss before the optimiser
step, and the HF loop steps on after a NaN), so every rank raises at the same step (a rank that
went on would wait forever in the next collective or `ray.train.report`). Nothing is reported
after it, so the last checkpoint is the last good one, and the driver raises (`job.py`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from fashion_batch.runtime.ray import quiet_train_worker
from fashion_batch.train.callbacks import EpochBatches, EpochEval, RayCheckpoint, StepRecord
from fashion_batch.train.card import training_metrics
from fashion_batch.train.checkpoint import record_stop, report_final, restore
from fashion_batch.train.model import (
    Training,
    build_training,
    eval_threads,
    evaluate,
    evaluate_base,
    publishable,
)
from fashion_batch.train.trainer import LossWindow, NonFiniteStep, build_trainer


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: MNRL fine-tune on this rank's slice of every global batch, in a
    directory of its own (the trainer's output dir, the copy of the checkpoint it resumes)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    workdir = tempfile.mkdtemp(prefix=f"fashion-batch-{config['name']}-rank{rank}-")
    try:
        _train(config, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _train(config: dict, workdir: str) -> None:
    import ray.train
    import ray.train.torch
    import torch

    quiet_train_worker()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))

    # [1] Prepare model: seed architecture and loss; the last checkpoint's position, if any.
    training = build_training(config, device, world)
    resume = os.path.join(workdir, "resume")
    state, resume = restore(ray.train.get_checkpoint(), training, resume, config)
    if state.get("done"):
        return  # a re-run of a finished run: its last checkpoint already holds the model
    state["attempts"].append(
        {"start_step": state["step"], "world_size": world, "nodes": _worker_nodes(world)}
    )
    retrieval = config["retrieval"]
    if rank == 0 and state["eval_before"] is None and retrieval is not None:
        # Two baselines: the base as published and the seed architecture before its first step
        # (with `--head-init preserve` the two rank alike; with `random` step 0 is worse).
        with eval_threads(config, ctx.get_local_world_size()):
            state["eval_base"] = evaluate_base(config["base_model"], device, retrieval)
            state["eval_before"] = evaluate(training.model, retrieval)

    # [2] Prepare the trainer: global batches split over the ranks, the run's callbacks.
    window = LossWindow(world)
    trainer = build_trainer(config, training, window, os.path.join(workdir, "trainer"), device)
    steps_per_epoch = len(trainer.sampler)
    checkpoints = _add_callbacks(trainer, config, training, state, window, rank)
    checkpoints.trainer = trainer

    # [3] Train
    started = time.time()
    try:
        trainer.train(resume_from_checkpoint=resume)
    except NonFiniteStep as stop:
        if rank == 0:
            record_stop(config, stop.step, stop.what, stop.value)
        return  # every rank stopped at the same step, before its optimiser step; no report

    # [4] Report: rank 0 saves the best epoch's model (by held-out NDCG@10; the last epoch
    # without an evaluation set) into the last checkpoint.
    metrics = training_metrics(
        config,
        state,
        world=world,
        steps_per_epoch=steps_per_epoch,
        steps=trainer.state.global_step,
        gather=training.gather,
        precision="fp16" if training.use_amp else "fp32",
        train_s=round(time.time() - started, 2),
    )
    if rank == 0:
        metrics["published_epoch"], metrics["eval_after"] = publishable(training, state)
    report_final(rank, training, metrics, state, config)


def _add_callbacks(trainer, config: dict, training: Training, state: dict, window, rank: int):
    """The run's callbacks, in the order they must run at a step's end: the loss record, the
    epoch's evaluation, the checkpoint that carries both. Returns the checkpoint callback.
    The trainer's own printer goes: the progress lines are ours."""
    import ray.train
    from transformers import PrinterCallback

    local_world = ray.train.get_context().get_local_world_size()
    steps_per_epoch = len(trainer.sampler)
    checkpoints = RayCheckpoint(config, training, state, steps_per_epoch, rank)
    trainer.remove_callback(PrinterCallback)
    for callback in (
        EpochBatches(trainer.sampler, state, steps_per_epoch),
        StepRecord(config, state, window, steps_per_epoch, rank),
        EpochEval(config, training, state, local_world, rank),
        checkpoints,
    ):
        trainer.add_callback(callback)
    return checkpoints


def _worker_nodes(world: int) -> list[str]:
    """The Ray node id of every rank, in rank order: where this attempt's workers run (after a
    node is lost, the restarted group's list shows where the run went on). A collective, so
    every rank calls it at the same point."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [node]
    nodes: list[str] = [""] * world
    dist.all_gather_object(nodes, node)
    return nodes
