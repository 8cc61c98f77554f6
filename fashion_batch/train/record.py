"""What a run shows while it trains and leaves beside the model: one progress line per logging
step, the TensorBoard log (`runs/`) and `training_loss.png`. Rank 0 only.

The TensorBoard log and the plot are written from the run's own record (the loss log and every
epoch's held-out scores, which checkpoints carry across restarts) when rank 0 saves the final
model, so a run restarted from a checkpoint still leaves one complete log, each step once. While
it trains, the progress lines are what shows it moving.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from fashion_batch.evaluate.retrieval import METRICS, PRIMARY
from fashion_batch.io.plots import png_bytes, subplots

log = logging.getLogger("fashion_batch.train.progress")
RUNS_DIR = "runs"
PLOT_FILE = "training_loss.png"
EVAL_METRICS = tuple(ours for ours, _ in METRICS)


def show_progress() -> None:
    """Progress lines reach the worker's stderr (which Ray forwards to the driver's terminal)
    whatever logging the worker process has."""
    log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


class StepLog:
    """One line per recorded loss: step/total, loss, lr, samples/s since the last line, and the
    ETA at this attempt's pace so far.

    Args:
        total_steps: optimiser steps of the whole run.
        global_batch: triplets per step, over all workers.
        start_step: the step this attempt starts from (a resumed run counts its own pace only).
        clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        total_steps: int,
        global_batch: int,
        start_step: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total = total_steps
        self.batch = global_batch
        self.start_step = start_step
        self.clock = clock
        self.started = clock()
        self.last = (start_step, self.started)

    def line(self, entry: dict) -> str:
        now, step = self.clock(), entry["step"]
        last_step, last_time = self.last
        self.last = (step, now)
        rate = (step - last_step) * self.batch / max(now - last_time, 1e-9)
        per_step = (now - self.started) / max(step - self.start_step, 1)
        eta = _clock_time((self.total - step) * per_step)
        return (
            f"step {step}/{self.total}  loss {entry['loss']:.4f}  lr {entry['lr']:.3g}  "
            f"{rate:.1f} samples/s  ETA {eta}"
        )

    def __call__(self, entry: dict) -> None:
        log.info(self.line(entry))


def _clock_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def write_tensorboard(metrics: dict, logdir: str) -> None:
    """`train/loss` and `train/lr` per logging step; `eval/<metric>` (`eval/ndcg_at_10`, ...)
    per epoch at its step and for the step-0 model at step 0, and the base as published under
    `eval_base/<metric>` at step 0."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(logdir)
    try:
        for entry in metrics["loss"]:
            writer.add_scalar("train/loss", entry["loss"], entry["step"])
            writer.add_scalar("train/lr", entry["lr"], entry["step"])
        evals = [(0, metrics.get("eval_before"))]
        evals += [(e["step"], e) for e in metrics.get("eval_epochs") or []]
        for step, scores in evals:
            for m in EVAL_METRICS if scores else ():
                writer.add_scalar(f"eval/{tag(m)}", scores[m], step)
        for m in EVAL_METRICS if metrics.get("eval_base") else ():
            writer.add_scalar(f"eval_base/{tag(m)}", metrics["eval_base"][m], 0)
    finally:
        writer.close()


def tag(metric: str) -> str:
    """A metric's TensorBoard tag: `ndcg@10` is `ndcg_at_10` (TensorBoard allows no `@`)."""
    return metric.replace("@", "_at_")


def plot_training(metrics: dict) -> bytes:
    """The PNG bytes of two panels: the loss per logging step, and held-out NDCG@10 per epoch
    (epoch 0: the model at step 0) beside the base's, the published epoch marked."""
    fig, (left, right) = subplots(2, figsize=(11, 4))
    steps = [e["step"] for e in metrics["loss"]]
    left.plot(steps, [e["loss"] for e in metrics["loss"]], marker=".", color="tab:blue")
    left.set_xlabel("step")
    left.set_ylabel("MNRL loss (mean since the last point)")
    left.set_title(f"training loss ({metrics['steps']} steps)", fontsize=9)
    _ndcg(right, metrics)
    return png_bytes(fig)


def _ndcg(ax, metrics: dict) -> None:
    epochs = metrics.get("eval_epochs") or []
    if not metrics.get("eval_before"):
        ax.text(0.5, 0.5, "nothing held out: no evaluation", ha="center", va="center")
        ax.set_axis_off()
        return
    xs = [0] + [e["epoch"] for e in epochs]
    ys = [metrics["eval_before"][PRIMARY]] + [e[PRIMARY] for e in epochs]
    ax.plot(xs, ys, marker="o", color="tab:green", label="fine-tuned (epoch 0: step 0)")
    if metrics.get("eval_base"):
        ax.axhline(metrics["eval_base"][PRIMARY], color="grey", ls="--", label="base")
    published = metrics.get("published_epoch")
    if published in xs:
        ax.plot([published], [ys[xs.index(published)]], "r*", ms=14, label="published")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out NDCG@10")
    ax.set_xticks(xs)
    ax.set_title("held-out retrieval", fontsize=9)
    ax.legend(fontsize=8)
