"""A default `fashion-batch embed` prints no warning, deprecation or traceback, one line naming
the model, and its progress in listings, not Ray Data's (issue 18).

The command runs in a subprocess with a user's environment (the suite's RAY_AUTH_MODE and
RAY_DATA_DISABLE_PROGRESS_BARS removed: those are what a default run would warn about), so it
starts a local Ray of its own: `own_ray`, so the shared cluster is down while it runs."""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import dirty_table, run_cli

pytestmark = pytest.mark.own_ray

NOISE = re.compile(r"warn|deprecat|traceback", re.IGNORECASE)


def _catalog(directory) -> int:
    """The dirty rows plus clean ones: 200 listings over two files."""
    dirty = dirty_table()
    n = 200 - len(dirty)
    clean = pa.table(
        {
            "listing_id": pa.array(range(1000, 1000 + n), pa.int64()),
            "title": [f"Wool coat no. {i}" for i in range(n)],
            "description": [f"A warm coat, size {i % 7}" for i in range(n)],
            "price": [float(i) for i in range(n)],
        }
    )
    table = pa.concat_tables([dirty, clean])
    directory.mkdir()
    pq.write_table(table.slice(0, 100), directory / "part-0.parquet")
    pq.write_table(table.slice(100), directory / "part-1.parquet")
    return len(table)


@pytest.mark.parametrize("runner", ["auto", "ray"])
def test_a_default_embed_is_quiet_and_shows_progress_in_listings(
    tmp_path, tiny_distilbert_dir, runner
):
    """auto: the local runner on a CI box (at most 4 CPUs); ray: a local Ray and its actors."""
    total = _catalog(tmp_path / "catalog")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # a new local Ray, not one a `ray start` elsewhere in the suite left on the machine
    env["RAY_ADDRESS"] = "local"
    # an empty export cache: the first run of a model exports it (the default backend is ONNX on
    # CPU), and that must be quiet too
    env["FASHION_BATCH_CACHE"] = str(tmp_path / "cache")
    argv = ["embed", "--input", str(tmp_path / "catalog"), "--output", str(tmp_path / "out")]
    argv += ["--model", tiny_distilbert_dir, "--runner", runner]
    done = run_cli(argv, env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert not [line for line in lines if NOISE.search(line)], done.stderr
    assert "Loading weights" not in done.stderr  # no bar per actor
    assert "Total Progress" not in done.stderr and "Running Dataset" not in done.stderr
    assert len([line for line in lines if tiny_distilbert_dir in line]) == 1, done.stderr
    progress = [line for line in lines if "fashion_batch.runtime.progress" in line]
    assert progress[-1].endswith(" listings/s")
    assert f"embed: {total}/{total} listings in " in progress[-1]
    assert "rows in" in done.stdout  # the summary still goes to stdout
