"""The embed job: `run(EmbedConfig(...))` embeds a Parquet catalog (job.py reads as its table of
contents). One module per concern: config, plan, stages, write, state (resume), incremental
(`--previous`), manifest, layout (the output contract), actors (pool sizing)."""

from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.job import run
from fashion_batch.embed.manifest import summary

__all__ = ["EmbedConfig", "run", "summary"]
