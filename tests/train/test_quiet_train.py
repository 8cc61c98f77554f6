"""A `fashion-batch train` on 2 workers shows its own progress lines and none of the libraries'
chatter that Ray forwards from its workers: no model-loading bars or INFO lines, no bytecode
listing from `datasets`' dill hashing while the model card's statistics are computed.

The command runs in a subprocess with a user's environment, so it starts a local Ray of its
own: `own_ray`, so the shared cluster is down while it runs."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import make_triplets, run_cli

pytestmark = pytest.mark.own_ray

CHATTER = (
    "Loading weights",  # transformers' bar, one per worker
    "Loading SentenceTransformer model",  # sentence-transformers' INFO lines
    "No device provided",
    "LOAD_GLOBAL",  # a disassembly printed while `datasets` hashed a table with dill
    "RESUME ",
    "Traceback",
    "broadcast_buffers",  # accelerate's FutureWarning about a DDP argument it passes itself
)


def test_train_prints_its_progress_and_no_library_chatter(tmp_path, tiny_distilbert_dir):
    triplets = tmp_path / "triplets.parquet"
    pq.write_table(pa.table(make_triplets()), triplets)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_ADDRESS"] = "local"
    argv = ["train", "--triplets", str(triplets), "--output", str(tmp_path / "model")]
    argv += ["--base-model", tiny_distilbert_dir, "--num-workers", "2", "--epochs", "1"]
    argv += ["--gate-margin", "0.99"]  # a 4-step run of a random model: not a quality test
    done = run_cli(argv, env)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-5000:]
    assert [c for c in CHATTER if c in console] == [], console[-5000:]
    progress = [line for line in console.splitlines() if "fashion_batch.train.progress" in line]
    assert progress and "step 4/4" in progress[-1], console[-5000:]
    assert (tmp_path / "model" / "README.md").exists()  # the card was made
