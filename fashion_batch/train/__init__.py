"""The train job: `run(TrainConfig(...))` fine-tunes the seed architecture with Ray Train."""

from fashion_batch.train.card import summary
from fashion_batch.train.config import TrainConfig
from fashion_batch.train.job import run

__all__ = ["TrainConfig", "run", "summary"]
