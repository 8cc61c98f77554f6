"""A synthetic marketplace catalog with real-world dirt, training triplets and shopper queries."""

from fashion_batch.sample_data.generate import SampleDataConfig, run

__all__ = ["SampleDataConfig", "run"]
