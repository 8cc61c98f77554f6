"""The inner training on sentence-transformers' `SentenceTransformerTrainer`, inside a Ray Train
worker, with the settings that keep "2 workers × 8 = 1 worker × 16".

* Batches: `get_train_dataloader` is overridden to hand the trainer ONE sampler of global batches
  (`data.global_batch_sampler`: NO_DUPLICATES and one triplet per product, per global batch) and
  `accelerator_config={"split_batches": True}` with the global batch as
  `per_device_train_batch_size`: accelerate then gives rank r the r-th contiguous slice of every
  global batch (`data.shard`; tests/train/test_hf_trainer_batches.py). The trainer's own
  `get_batch_sampler` builds its sampler from `per_device_train_batch_size` and a Dataset; ours
  needs the product column, which must not reach the collator, so the override builds the loader.
* Loss and DDP: MNRL gathers candidates across ranks (`gather_across_devices`); accelerate wraps
  the model in DDP (unused pooler: `find_unused_parameters`) and averages the gradients, which is
  the gradient of the single-process mean loss.
* The seed's optimiser settings are training arguments: `adamw_torch`, weight decay 0,
  max grad norm 1, linear decay without warm-up, lr, seed; fp16 only on CUDA. No HF checkpoints
  (`save_strategy="no"`), no HF logging (`report_to="none"`, `logging_strategy="no"`): the run's
  own record (train/record.py, train/card.py) and Ray checkpoints (train/checkpoint.py) stay.

Two small overrides keep the NaN stop, because no `TrainerCallback` sees the loss before the
backward pass and the HF loop steps on after a NaN (it only filters the logged value; tested in
tests/train/test_trainer.py):

* `compute_loss`: the step's loss is averaged over the ranks (one all_reduce, as every step logs
  it anyway); a NaN/inf mean raises `NonFiniteStep` on every rank before the backward pass;
* `_clip_grad_norm`: in fp32 a non-finite gradient norm raises `NonFiniteStep` before the
  optimiser step (in fp16 accelerate's grad scaler skips such a step itself).
"""

from __future__ import annotations

import functools
import math
import os

from fashion_batch.train.config import MAX_GRAD_NORM
from fashion_batch.train.data import global_batch_sampler, triplets_dataset

WEIGHTS = "weights.safetensors"  # the model's weights in a checkpoint (checkpoint.py)


class NonFiniteStep(RuntimeError):
    """Raised on every rank at the same step: `what` ("loss" or "gradient norm") was `value`."""

    def __init__(self, step: int, what: str, value):
        super().__init__(f"step {step}: the {what} was {value}")
        self.step, self.what, self.value = step, what, value


def training_args(config: dict, output_dir: str, device):
    """The seed recipe as `SentenceTransformerTrainingArguments` (one rank's view of it).

    Args:
        config: the train loop config.
        output_dir: this rank's own directory (nothing is saved there: `save_strategy="no"`).
        device: this worker's torch device; fp16 only on CUDA.
    """
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config["batch_size"],  # the GLOBAL batch: split below
        accelerator_config={"split_batches": True},
        num_train_epochs=config["epochs"],
        learning_rate=config["lr"],
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear",
        warmup_steps=0,
        optim="adamw_torch",
        seed=config["seed"],
        fp16=device.type == "cuda",
        use_cpu=device.type == "cpu",
        dataloader_drop_last=True,  # all_gather needs equal shapes (the sampler drops too)
        ddp_find_unused_parameters=True,  # mean pooling never uses a BERT-style pooler
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )


@functools.cache
def trainer_class():
    """`SentenceTransformerTrainer` with the global batch sampler and the NaN stop (imported
    lazily: the driver never loads the trainer)."""
    from sentence_transformers import SentenceTransformerTrainer

    class FashionTrainer(SentenceTransformerTrainer):
        """Args beyond the trainer's: `config` (the loop config), `window` (`LossWindow`)."""

        def __init__(self, *args, config: dict, window, **kwargs):
            super().__init__(*args, **kwargs)
            self.config = config
            self.window = window
            self.sampler = global_batch_sampler(
                config["train"], config["batch_size"], config["seed"]
            )

        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            self.accelerator.even_batches = False
            loader = DataLoader(
                self.train_dataset, batch_sampler=self.sampler, collate_fn=self.data_collator
            )
            self._train_dataloader = self.accelerator.prepare(loader)
            return self._train_dataloader

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            step = self.state.global_step + 1
            if self.args.process_index == 0 and step == self.config["nan_at_step"]:
                loss = loss * float("nan")  # testing only; the other ranks' losses stay finite
            mean = self.window.add(loss)  # the same number on every rank
            if not math.isfinite(mean):
                raise NonFiniteStep(step, "loss", mean)
            return loss

        def _clip_grad_norm(self, model):
            norm = super()._clip_grad_norm(model)  # (): DDP averaged the gradients: same on all
            if not self.args.fp16 and not math.isfinite(float(norm)):
                raise NonFiniteStep(self.state.global_step + 1, "gradient norm", "not finite")
            return norm

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from safetensors.torch import load_model

            path = os.path.join(resume_from_checkpoint, WEIGHTS)
            load_model(self.model, path, device=str(self.model.device))

    return FashionTrainer


def build_trainer(config: dict, training, window, output_dir: str, device):
    """The trainer of `training.model` with `training.loss` over `config["train"]`, for this
    rank (`output_dir` its own)."""
    return trainer_class()(
        model=training.model,
        args=training_args(config, output_dir, device),
        train_dataset=triplets_dataset(config["train"], "train"),
        loss=training.loss,
        config=config,
        window=window,
    )


class LossWindow:
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
