"""The train job: `run(TrainConfig(...))` fine-tunes the seed architecture with Ray Train.

`run` and `summary` are imported on first use, so reading the config (the CLI's parser, `import
fashion_batch`) does not load the job's modules."""

from fashion_batch.train.config import TrainConfig

__all__ = ["TrainConfig", "run", "summary"]


def __getattr__(name: str):
    if name == "run":
        from fashion_batch.train.job import run

        return run
    if name == "summary":
        from fashion_batch.train.card import summary

        return summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
