"""Shared fixtures: tiny inline catalogs, the builtin MiniLM, a tiny DistilBERT, Ray clusters.

Ray tests start one local cluster per module (`ray_cluster` is module-scoped) with fewer CPUs
than a CI box has, so read tasks always find a free CPU beside the embedding actor.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import dirty_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# One auth mode for every Ray cluster the suite starts, set before the first ray.init. Ray 2.60
# turns token auth on for a new local cluster when RAY_AUTH_MODE is unset (and writes
# ~/.ray/auth_token), and the driver process caches the mode at its first init: a later module
# that flips the variable gets a GCS in one mode and a driver client in the other
# ("InvalidAuthToken" at ray.init). The suite's clusters are loopback-only and short-lived.
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture
def dirty_catalog(tmp_path: Path) -> Path:
    """The dirty rows split over two files, so duplicates cross a file boundary."""
    table = dirty_table()
    d = tmp_path / "catalog"
    d.mkdir()
    pq.write_table(table.slice(0, 5), d / "part-0.parquet")
    pq.write_table(table.slice(5), d / "part-1.parquet")
    return d


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    from fashion_batch.encoders.models import resolve_model

    return resolve_model("builtin:minilm")


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory, minilm_dir) -> str:
    """A DistilBERT with random weights and the MiniLM WordPiece tokenizer (same uncased vocab):
    the seed's exact architecture, built in process, never downloaded."""
    from fashion_batch.encoders.models import random_distilbert

    d = tmp_path_factory.mktemp("tiny-distilbert")
    return random_distilbert(d, minilm_dir, dim=32, n_layers=2, n_heads=2, hidden_dim=64, seed=0)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
