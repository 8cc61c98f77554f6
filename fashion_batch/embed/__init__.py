"""The embed job: `run(EmbedConfig(...))` embeds a Parquet catalog (job.py reads as its table of
contents). One module per concern: config, plan, stages, write, state (resume), publish (staged
units into parts), incremental (`--previous`), manifest, layout (the output contract), actors
(pool sizing).

`run` and `summary` are imported on first use, so reading the config (the CLI's parser, `import
fashion_batch`) does not load the job's modules."""

from fashion_batch.embed.config import EmbedConfig

__all__ = ["EmbedConfig", "run", "summary"]


def __getattr__(name: str):
    if name == "run":
        from fashion_batch.embed.job import run

        return run
    if name == "summary":
        from fashion_batch.embed.manifest import summary

        return summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
