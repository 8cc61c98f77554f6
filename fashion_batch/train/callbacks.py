"""The run's duties during `SentenceTransformerTrainer.train`, as `TrainerCallback`s, in the order
they are registered (each step: the loss record, then the epoch's evaluation, then the checkpoint
that carries both):

* `EpochBatches`: at each epoch's start, the global sampler is set to that epoch (also when the
  trainer resumes mid-epoch and skips batches) and what it draws is recorded;
* `StepRecord`: the loss of every logging step (`training_metrics.json`) and its progress line;
* `EpochEval`: rank 0 scores each finished epoch on the held-out set and keeps the best one;
* `RayCheckpoint`: every `checkpoint_steps` (default: every epoch) a checkpoint through
  `ray.train.report`, written by rank 0 (checkpoint.py); then, in tests, the injected faults.

All of them share the run's `state` dict (the position and record a checkpoint carries).
"""

from __future__ import annotations

from transformers import TrainerCallback

from fashion_batch.runtime.faults import step_hook
from fashion_batch.train.checkpoint import fail_once, report_checkpoint
from fashion_batch.train.model import eval_threads, evaluate, keep_if_best
from fashion_batch.train.record import StepLog, show_progress


class EpochBatches(TrainerCallback):
    """Sets the global batch sampler to the epoch about to run and records what it draws (its
    entry replaced when a resumed run draws the epoch again: the sampler is deterministic)."""

    def __init__(self, sampler, state: dict, steps_per_epoch: int):
        self.sampler, self.state, self.steps_per_epoch = sampler, state, steps_per_epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = state.global_step // self.steps_per_epoch
        self.sampler.set_epoch(epoch)
        batches = sum(1 for _ in self.sampler)  # once per epoch: the deferral counts
        entry = {"epoch": epoch + 1, "batches": batches}
        entry.update({f"deferred_{c}": n for c, n in self.sampler.deferred.items()})
        kept = [e for e in self.state["batches"] if e["epoch"] != epoch + 1]
        self.state["batches"] = [*kept, entry]


class StepRecord(TrainerCallback):
    """The rank-mean loss since the last record (`trainer.LossWindow`) at step 1, every
    `logging_steps` and the last step; rank 0 prints a progress line for each. Also keeps the
    position (step, epoch, batch within it) in `state`."""

    def __init__(self, config: dict, state: dict, window, steps_per_epoch: int, rank: int):
        self.config, self.state, self.window = config, state, window
        self.steps_per_epoch, self.rank = steps_per_epoch, rank
        self.total = steps_per_epoch * config["epochs"]
        self.progress = StepLog(self.total, config["batch_size"], state["step"])
        if rank == 0:
            show_progress()

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        step = state.global_step
        if step == 1 or step % self.config["logging_steps"] == 0 or step == self.total:
            entry = self.window.record(step, self.steps_per_epoch, lr_scheduler.get_last_lr()[0])
            self.state["loss"].append(entry)
            if self.rank == 0:
                self.progress(entry)
        epoch, batch = divmod(step, self.steps_per_epoch)
        self.state.update(step=step, epoch=epoch, batch=batch)


class EpochEval(TrainerCallback):
    """End of an epoch: rank 0 scores it before its checkpoint, so a resumed run has the score
    and, if it is the best so far, its weights. The other ranks wait in the next collective."""

    def __init__(self, config: dict, training, state: dict, local_world: int, rank: int):
        self.config, self.training, self.state = config, training, state
        self.local_world, self.rank = local_world, rank

    def on_step_end(self, args, state, control, **kwargs):
        retrieval = self.config["retrieval"]
        if self.rank != 0 or retrieval is None or self.state["batch"] != 0:
            return
        with eval_threads(self.config, self.local_world):
            keep_if_best(self.training, self.state, evaluate(self.training.model, retrieval))


class RayCheckpoint(TrainerCallback):
    """A checkpoint every `checkpoint_steps` (every epoch by default) but the last step (the
    final report carries the model), through `ray.train.report` on every rank (a barrier),
    written by rank 0; then the injected failure and fault hook of the tests."""

    def __init__(self, config: dict, training, state: dict, steps_per_epoch: int, rank: int):
        self.config, self.training, self.state = config, training, state
        self.trainer = None  # set once the trainer is built: it saves its optimiser state
        self.every = config["checkpoint_steps"] or steps_per_epoch
        self.total = steps_per_epoch * config["epochs"]
        self.rank = rank

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.every == 0 and step < self.total:
            report_checkpoint(self.rank, self.trainer, self.training, self.state)
        if self.rank == 0 and step == self.config["fail_at_step"]:
            fail_once(self.config["fail_marker"], step)
        step_hook(step, self.rank)
