"""Shared fixtures: tiny inline catalogs, the builtin MiniLM, a tiny DistilBERT, one Ray.

Ray starts once per test run: `ray_cluster` is a local 2-CPU cluster shared by every test that
asks for it. A module that needs a cluster of another shape marks itself `own_ray` and starts its
own after shutting the shared one down; those modules are ordered after every user of the shared
cluster, so it is never started twice. The groups and why they differ:

* tests/embed/test_s3.py: the workers must inherit the AWS_* environment of the moto server,
  which exists only once that module starts it;
* tests/embed/test_embed_gpu_scheduling.py: a logical GPU (`num_gpus=1`);
* tests/embed/test_faults.py: two nodes from `ray start`, one of which it kills;
* tests/cluster/test_job_submit.py: a `ray start --head` with the Jobs API;
* tests/cluster/test_multinode.py: a `ray.cluster_utils.Cluster` of nodes with their own CPUs,
  reshaped and one of them killed by its tests.

Tests that start no Ray run first; `make test-fast` runs only them (`-m "not ray and not gpu"`:
the `ray` marker is added here to every test that uses a cluster). A test that starts Ray without
asking for a cluster fails, so the fast target stays fast.
"""

from __future__ import annotations

import os
import sys
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


def _uses_ray(item: pytest.Item) -> int:
    """0: no Ray; 1: the shared cluster; 2: a cluster of the module's own shape."""
    if item.get_closest_marker("own_ray"):
        return 2
    return 1 if "ray_cluster" in getattr(item, "fixturenames", ()) else 0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _uses_ray(item):
            item.add_marker(pytest.mark.ray)
    items.sort(key=_uses_ray)  # stable: file order is kept within each group


@pytest.fixture(scope="session")
def _shared_ray():
    yield
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="module")
def ray_cluster(_shared_ray):
    """The shared local cluster: 2 CPUs, fewer than a CI box has, so read tasks always find a
    free CPU beside the embedding actors."""
    import ray

    if not ray.is_initialized():
        # address='local': a new cluster, never a `ray start` one left on the machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture(scope="module", autouse=True)
def _own_ray_modules_stop_the_shared_cluster(request):
    if request.node.get_closest_marker("own_ray") and _ray_up():
        sys.modules["ray"].shutdown()


@pytest.fixture(autouse=True)
def _no_stray_ray(request):
    """A test that needs Ray must say so (`ray_cluster` or `own_ray`), or `make test-fast` would
    start clusters behind its back."""
    before = _ray_up()
    yield
    if not before and _ray_up() and not _uses_ray(request.node):
        sys.modules["ray"].shutdown()
        pytest.fail("this test started Ray without the ray_cluster fixture or the own_ray mark")


def _ray_up() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()
