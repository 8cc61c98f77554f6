"""The end of a train run: the quality gate, then OUTPUT replaced atomically (or the refused
model kept beside it). `train/job.py` calls `publish_or_reject` with the run's last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from fashion_batch.errors import GateError
from fashion_batch.evaluate.retrieval import PRIMARY
from fashion_batch.train.card import summary
from fashion_batch.train.config import METRICS_FILE, TrainConfig


def publish_or_reject(checkpoint, config: TrainConfig) -> dict:
    """The quality gate, then OUTPUT: the run's model is published only if its held-out NDCG@10
    is at least the base's minus `--gate-margin`. A refused model goes to
    `OUTPUT.rejected-<name>/` beside OUTPUT (OUTPUT itself is not touched) and GateError says
    both scores. Returns training_metrics, with the gate's record."""
    with checkpoint.as_directory() as d:
        source = Path(d, "model")
        if not (source / METRICS_FILE).exists():
            raise RuntimeError(f"the last checkpoint {checkpoint.path} holds no final model")
        metrics = json.loads((source / METRICS_FILE).read_text())
        metrics["gate"] = gate(metrics, config.gate_margin)
        if metrics["gate"]["passed"]:
            publish(source, config.output, metrics)
            print(summary(metrics))
            return metrics
        rejected = f"{config.output}.rejected-{config.name}"
        publish(source, rejected, metrics)
    print(summary(metrics))
    raise GateError(
        f"quality gate: {metrics['gate']['verdict']}; nothing was published to {config.output} "
        f"(left as it was). The model is kept for inspection in {rejected}"
    )


def gate(metrics: dict, margin: float) -> dict:
    """Whether the published epoch's held-out NDCG@10 is at least the base's minus `margin`.
    Without a held-out evaluation there is nothing to compare: it passes, and says so."""
    base, after = metrics.get("eval_base"), metrics.get("eval_after")
    if not base or not after:
        return {"passed": True, "margin": margin, "verdict": "skipped (nothing held out)"}
    passed = after[PRIMARY] >= base[PRIMARY] - margin
    relation = ">=" if passed else "<"
    verdict = (
        f"{'passed' if passed else 'refused'}: fine-tuned held-out NDCG@10 "
        f"{after[PRIMARY]:.4f} (epoch {metrics['published_epoch']}) {relation} base "
        f"{base[PRIMARY]:.4f} - margin {margin}"
    )
    return {
        "passed": passed,
        "margin": margin,
        "base": base[PRIMARY],
        "fine_tuned": after[PRIMARY],
        "verdict": verdict,
    }


def publish(source: Path, output: str, metrics: dict) -> None:
    """Copy the finished model dir `source` to `output` (with `metrics` as its
    training_metrics.json), so that readers of `output` only ever see a complete model: the
    earlier one or the new one.

    The copy is written beside `output` (a hidden sibling, so the same filesystem) while an earlier
    model stays in place, readable; only once the copy is complete is the earlier one renamed
    aside, the new one renamed in, and the earlier one deleted. Between those two renames there
    is briefly no OUTPUT (never a partial one); if the second fails, the earlier model is renamed
    back, and a failed copy is removed. Why not a symlink swap, which has no such gap: OUTPUT stays
    a plain directory that users copy, sync and delete like any model dir, and an existing
    directory cannot be replaced by a symlink in one step anyway.
    """
    parent, name = os.path.split(output)
    token = uuid.uuid4().hex[:8]
    new, old = (os.path.join(parent, f".{name}.{kind}-{token}") for kind in ("new", "old"))
    try:
        shutil.copytree(source, new)
        Path(new, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    replaced = os.path.lexists(output)
    if replaced:
        os.rename(output, old)
    try:
        os.rename(new, output)
    except BaseException:
        if replaced:
            os.rename(old, output)
        shutil.rmtree(new, ignore_errors=True)
        raise
    if os.path.islink(old):
        os.unlink(old)  # OUTPUT was a link to a model dir: the link is replaced, not its target
    elif replaced:
        shutil.rmtree(old)
