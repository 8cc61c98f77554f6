"""The trainer the workers run (train/trainer.py, train/callbacks.py), in one process, no Ray.

* Why the NaN stop is an override and not a callback: the plain `SentenceTransformerTrainer`
  given a NaN loss at step 2 backpropagates it, takes the optimiser step (the weights turn NaN)
  and trains on to the end; a callback hears of the step only after it (`on_step_end`), and
  `on_log` gets the NaN filtered away. Ours raises `NonFiniteStep` at step 2 before its backward
  pass, with the weights of step 1.
* A resume from a checkpoint written mid-epoch (`checkpoint.write_checkpoint`) through
  `trainer.train(resume_from_checkpoint=...)` trains the remaining steps exactly as the run that
  never stopped: the trainer skips the batches done in that epoch, and `EpochBatches` sets the
  global sampler to the resumed epoch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from fashion_batch.train.callbacks import EpochBatches, StepRecord
from fashion_batch.train.checkpoint import initial_state, write_checkpoint
from fashion_batch.train.data import split_triplets
from fashion_batch.train.model import build_training
from fashion_batch.train.trainer import LossWindow, NonFiniteStep, build_trainer, training_args
from tests.helpers import make_triplets

pytestmark = pytest.mark.slow  # 26 MiniLM steps in one process

STEPS_PER_EPOCH = 4  # 64 training triplets / 16
DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def config(minilm_dir) -> dict:
    train, held_out = split_triplets(make_triplets(), 0.2, seed=42)
    return {
        "base_model": minilm_dir,
        "train": train,
        "eval": held_out,
        "retrieval": None,
        "batch_size": 16,
        "epochs": 2,
        "lr": 5e-5,
        "seed": 42,
        "max_seq_length": 32,
        "head_init": "preserve",
        "normalize_output": True,
        "gather_across_devices": False,
        "logging_steps": 1,
        "checkpoint_steps": None,
        "nan_at_step": None,
        "fail_at_step": None,
    }


def no_dropout(model) -> None:
    """Dropout off: the resumed run cannot replay the dropout masks (no RNG state is kept)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class Weights(TrainerCallback):
    """The model's weights (a copy) after every optimiser step."""

    def __init__(self):
        self.after = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after[state.global_step] = {k: v.clone() for k, v in model.state_dict().items()}


class StopAt(TrainerCallback):
    """Write a checkpoint at `step` and stop there, as a worker that dies right after it."""

    def __init__(self, step: int, directory: str, run_state: dict, training):
        self.step, self.directory = step, directory
        self.run_state, self.training = run_state, training
        self.trainer = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            write_checkpoint(self.directory, self.trainer, self.training, self.run_state)
            control.should_training_stop = True


def ours(config: dict, tmp_path, name: str, **changes):
    """(trainer, training, the run's state) as a one-worker run builds them."""
    config = {**config, **changes}
    training = build_training(config, DEVICE, world=1)
    no_dropout(training.model)
    window = LossWindow(1)
    trainer = build_trainer(config, training, window, str(tmp_path / name), DEVICE)
    state = initial_state()
    trainer.add_callback(EpochBatches(trainer.sampler, state, STEPS_PER_EPOCH))
    trainer.add_callback(StepRecord(config, state, window, STEPS_PER_EPOCH, rank=0))
    return trainer, training, state


class NanAt(torch.nn.Module):
    """MNRL whose loss is NaN at the `at`-th call."""

    def __init__(self, loss, at: int):
        super().__init__()
        self.loss, self.at, self.calls = loss, at, 0

    def forward(self, features, labels):
        self.calls += 1
        value = self.loss(features, labels)
        return value * float("nan") if self.calls == self.at else value


def test_plain_trainer_steps_on_after_a_nan_loss(config, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer

    training = build_training(config, DEVICE, world=1)
    weights, logged = Weights(), []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(logs)

    args = training_args({**config, "epochs": 1}, str(tmp_path / "plain"), DEVICE)
    args.logging_strategy, args.logging_steps = "steps", 1
    trainer = SentenceTransformerTrainer(
        model=training.model,
        args=args,
        train_dataset=Dataset.from_dict(config["train"]),
        loss=NanAt(training.loss, at=2),
        callbacks=[weights, Logs()],
    )
    trainer.train()
    # It trained every step: nothing stopped it at step 2 ...
    assert trainer.state.global_step == STEPS_PER_EPOCH
    # ... whose optimiser step took the NaN gradient: the weights were finite after step 1 and
    # are NaN from step 2 on; on_step_end, the first a callback hears of it, is after the step.
    assert all(torch.isfinite(v).all() for v in weights.after[1].values())
    assert any(torch.isnan(v).any() for v in weights.after[2].values())
    # And the NaN is filtered out of what on_log sees (logging_nan_inf_filter).
    assert all(np.isfinite(entry["loss"]) for entry in logged if "loss" in entry)


def test_our_trainer_stops_before_the_optimizer_step_of_a_nan_loss(config, tmp_path):
    trainer, _, state = ours(config, tmp_path, "nan", nan_at_step=2)
    weights = Weights()
    trainer.add_callback(weights)
    with pytest.raises(NonFiniteStep) as stop:
        trainer.train()
    assert (stop.value.step, stop.value.what) == (2, "loss") and np.isnan(stop.value.value)
    assert trainer.state.global_step == 1 and list(weights.after) == [1]
    # The model is step 1's: step 2 neither stepped nor backpropagated into the weights.
    now = trainer.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in weights.after[1].items())
    assert [e["step"] for e in state["loss"]] == [1]


def test_resume_mid_epoch_trains_the_remaining_steps_as_the_uninterrupted_run(config, tmp_path):
    total = 2 * STEPS_PER_EPOCH
    stop_at = STEPS_PER_EPOCH + 2  # the second epoch's third batch is the next to train

    trainer, _, whole = ours(config, tmp_path, "whole")
    trainer.train()
    assert [e["step"] for e in whole["loss"]] == list(range(1, total + 1))

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    trainer, training, first = ours(config, tmp_path, "first")
    stopper = StopAt(stop_at, str(checkpoint), first, training)
    stopper.trainer = trainer
    trainer.add_callback(stopper)
    trainer.train()
    assert trainer.state.global_step == stop_at

    trainer, _, second = ours(config, tmp_path, "second")
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == total
    resumed = [(e["step"], e["loss"], e["lr"]) for e in first["loss"] + second["loss"]]
    expected = [(e["step"], e["loss"], e["lr"]) for e in whole["loss"]]
    assert [s for s, _, _ in resumed] == [s for s, _, _ in expected]
    np.testing.assert_allclose(
        [loss for _, loss, _ in resumed], [loss for _, loss, _ in expected], atol=1e-5, rtol=0
    )
    assert [lr for _, _, lr in resumed] == pytest.approx([lr for _, _, lr in expected])
    assert second["batches"] == [e for e in whole["batches"] if e["epoch"] == 2]
