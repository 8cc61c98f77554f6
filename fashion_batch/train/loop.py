"""`train_loop_per_worker`: what each Ray Train worker runs, in numbered steps.

A plain PyTorch loop, not `SentenceTransformerTrainer`; it uses the library's pieces (the seed
model from `build_seed_model`, `MultipleNegativesRankingLoss`, `NoDuplicatesBatchSampler` under
`batches.ProductBatchSampler`, the model card data) and the seed's optimiser settings (AdamW,
weight decay 0, max grad norm 1, linear decay without warm-up; fp16 autocast only on CUDA).

What the trainer's batching would and would not do, checked against the installed libraries in
tests/train/test_hf_trainer_batches.py: with its defaults the sampler draws per-device batches
and accelerate deals whole batches round-robin to the ranks, so NO_DUPLICATES holds only within
each rank's rows, never across the global batch that a gathering loss sees, and 1×16 and 2×8
train on different batches; with `accelerator_config={"split_batches": True}` and the global
batch as `per_device_train_batch_size` it deals exactly the slices this loop takes. So batching
does not keep the loop hand-written. What does, today: a non-finite loss stops every rank
before the optimiser step and nothing is reported after it (the HF Trainer steps on and only
filters the logged value); checkpoints go through `ray.train.report` from rank 0 only, with the
best epoch's weights (`RayTrainReportCallback` copies HF checkpoint dirs while rank 0 may still
write them); the base and step-0 evaluations and the best-epoch choice are in the loop. Each of
these could become a trainer callback; that port has not been done.

Sharding: every rank draws the same *global* batches from one `NoDuplicatesBatchSampler` (global
batch size, seed + epoch) and keeps the contiguous slice `rows[r*b:(r+1)*b]`, b = batch_size //
world_size. With `gather_across_devices` MNRL all-gathers in rank order, so rank r's anchors meet
exactly the positives and negatives a single process would see; DDP averages the gradients,
which equals the gradient of the single-process mean loss. So 2×8 and 1×16 train the same model
(the tests check that their losses agree step by step).

A NaN/inf loss stops the run: each step's loss is averaged over the ranks before the backward
pass, so every rank sees the same number and they all stop at the same step (a rank that went on
would wait forever in the next collective or `ray.train.report`). Nothing is reported after it,
so the last checkpoint is the last good one, and the driver raises (`job.py`).
"""

from __future__ import annotations

import math
import time

from fashion_batch.runtime.faults import step_hook
from fashion_batch.runtime.ray import quiet_train_worker
from fashion_batch.train.card import training_metrics
from fashion_batch.train.checkpoint import (
    fail_once,
    initial_state,
    record_stop,
    report_checkpoint,
    report_final,
    restore,
)
from fashion_batch.train.config import COLUMNS, MAX_GRAD_NORM
from fashion_batch.train.data import global_batch_sampler, shard
from fashion_batch.train.model import (
    Training,
    build_training,
    eval_threads,
    evaluate,
    evaluate_base,
    features,
    keep_if_best,
    prepare_ddp,
    publishable,
)
from fashion_batch.train.record import StepLog, show_progress


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: MNRL fine-tune on this rank's slice of every global batch."""
    import ray.train
    import ray.train.torch
    import torch

    quiet_train_worker()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))

    # [1] Prepare data: identical global batches on every rank, each rank keeps its slice.
    sampler = global_batch_sampler(config["train"], config["batch_size"], config["seed"])
    steps_per_epoch = len(sampler)

    # [2] Prepare model: seed architecture, loss, optimiser; restore the last checkpoint if any.
    training = build_training(config, device, world, steps_per_epoch * config["epochs"])
    state = restore(ray.train.get_checkpoint(), training, initial_state(), config)
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
    ddp_loss = prepare_ddp(training.loss)

    # [3] Train
    training.model.train()
    started = time.time()
    step = _train_epochs(config, training, ddp_loss, sampler, state, rank, world, device)
    if step is None:
        return  # a non-finite loss stopped every rank at the same step; no report after it

    # [4] Report: rank 0 saves the best epoch's model (by held-out NDCG@10; the last epoch
    # without an evaluation set) into the last checkpoint.
    metrics = training_metrics(
        config,
        state,
        world=world,
        steps_per_epoch=steps_per_epoch,
        steps=step,
        gather=training.gather,
        precision="fp16" if training.use_amp else "fp32",
        train_s=round(time.time() - started, 2),
    )
    if rank == 0:
        metrics["published_epoch"], metrics["eval_after"] = publishable(training, state)
    report_final(rank, training, metrics, state, config)


def _train_epochs(
    config: dict, training: Training, ddp_loss, sampler, state: dict, rank: int, world: int, device
) -> int | None:
    """Train from the position in `state` to the end of the last epoch, logging the loss,
    checkpointing and (in tests) failing on the way; returns the last step, or None when a
    non-finite loss or gradient stopped the run before its step was taken."""
    import ray.train
    import torch

    local_world = ray.train.get_context().get_local_world_size()
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * config["epochs"]
    checkpoint_steps = config["checkpoint_steps"] or steps_per_epoch
    window = _LossWindow(world)
    step = state["step"]
    progress = StepLog(total_steps, config["batch_size"], step)
    if rank == 0:
        show_progress()
    for epoch in range(state["epoch"], config["epochs"]):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        _record_batches(state, epoch, len(batches), sampler.deferred)
        first = state["batch"] if epoch == state["epoch"] else 0
        for b in range(first, len(batches)):
            rows = shard(batches[b], rank, world)
            batch = [  # anchor, positive, negative; input_ids of each: (len(rows), seq_len)
                features(training.model, [config["train"][c][i] for i in rows], device)
                for c in COLUMNS
            ]
            with torch.autocast(device.type, dtype=torch.float16, enabled=training.use_amp):
                loss = ddp_loss(batch, None)  # (): this rank's MNRL loss
            if rank == 0 and step + 1 == config["nan_at_step"]:
                loss = loss * float("nan")  # testing only; the other ranks' losses stay finite
            mean = window.add(loss)  # the same number on every rank
            stop = None if math.isfinite(mean) else ("loss", mean)
            if stop is None and not _optimizer_step(training, loss):
                stop = ("gradient norm", "not finite")
            if stop:
                if rank == 0:
                    record_stop(config, step + 1, *stop)
                return None
            step += 1
            if step == 1 or step % config["logging_steps"] == 0 or step == total_steps:
                lr = training.scheduler.get_last_lr()[0]
                state["loss"].append(window.record(step, steps_per_epoch, lr))
                if rank == 0:
                    progress(state["loss"][-1])
            position = (epoch, b + 1) if b + 1 < len(batches) else (epoch + 1, 0)
            state.update(step=step, epoch=position[0], batch=position[1])
            if rank == 0 and position[1] == 0 and config["retrieval"] is not None:
                # End of an epoch: score it before its checkpoint, so a resumed run has the
                # score and, if it is the best so far, its weights. The other ranks wait in
                # the next collective.
                with eval_threads(config, local_world):
                    keep_if_best(training, state, evaluate(training.model, config["retrieval"]))
            if step % checkpoint_steps == 0 and step < total_steps:
                report_checkpoint(rank, training, state)
            if rank == 0 and step == config["fail_at_step"]:
                fail_once(config["fail_marker"], step)
            step_hook(step, rank)
    return step


def _record_batches(state: dict, epoch: int, batches: int, deferred: dict) -> None:
    """What the sampler drew in `epoch` (its entry replaced when a resumed run draws the epoch
    again: the sampler is deterministic, so the numbers are the same)."""
    entry = {"epoch": epoch + 1, "batches": batches}
    entry.update({f"deferred_{cause}": n for cause, n in deferred.items()})
    state["batches"] = [e for e in state["batches"] if e["epoch"] != epoch + 1] + [entry]


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


def _optimizer_step(training: Training, loss) -> bool:
    """Backward and one optimiser step. False, with the weights untouched, when the gradient norm
    is not finite in fp32 (in fp16 the grad scaler skips such a step itself and lowers its scale).
    DDP has averaged the gradients, so every rank gets the same answer."""
    import torch

    optimizer, scaler = training.optimizer, training.scaler
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(training.model.parameters(), MAX_GRAD_NORM)  # ()
    if not training.use_amp and not torch.isfinite(norm):
        return False
    scaler.step(optimizer)
    scaler.update()
    training.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return True


class _LossWindow:
    """Each step's loss averaged over the ranks, summed since the last record; a record is the
    mean over ranks and steps.

    Every rank calls `add` at every step, so its all_reduce is a matching collective, and every
    rank holds the same mean: a NaN on one rank is a NaN on all, and they stop together.
    """

    def __init__(self, world: int):
        import torch.distributed as dist

        self.world = world
        self.distributed = dist.is_available() and dist.is_initialized() and world > 1
        self.sum = 0.0  # mean loss over ranks, summed over the steps since the last record
        self.n = 0

    def add(self, loss) -> float:
        """This step's loss averaged over the ranks."""
        import torch.distributed as dist

        total = loss.detach().float().clone()  # (): this rank's loss, then the sum over ranks
        if self.distributed:
            dist.all_reduce(total)
        mean = float(total) / self.world
        self.sum += mean
        self.n += 1
        return mean

    def record(self, step: int, steps_per_epoch: int, lr: float) -> dict:
        entry = {
            "step": step,
            "epoch": round(step / steps_per_epoch, 4),
            "loss": self.sum / self.n,  # mean over ranks and steps
            "lr": lr,
        }
        self.sum = 0.0
        self.n = 0
        return entry
