"""The train job: `run(TrainConfig(...))` fine-tunes the seed architecture with Ray Train."""

from fashion_batch.train.job import TrainConfig, run, summary

__all__ = ["TrainConfig", "run", "summary"]
