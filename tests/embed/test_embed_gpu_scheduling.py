"""Actors scheduled with `num_gpus` against logical GPUs (ray.init(num_gpus=1)) on a machine
without CUDA must fall back to CPU and still produce the same embeddings."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from ray._common.test_utils import wait_for_condition

from fashion_batch.embed import EmbedConfig, run
from fashion_batch.embed.actors import actor_settings
from tests.helpers import own_ray

pytestmark = pytest.mark.own_ray


@pytest.fixture(scope="module")
def logical_gpu_cluster():
    with own_ray(num_cpus=2, num_gpus=1):
        yield


def test_default_actor_settings_take_one_gpu_per_actor(logical_gpu_cluster, tmp_path):
    pool = actor_settings(EmbedConfig(input="x", output="y"))
    assert pool.gpus == 1.0 and pool.cpus == 1.0 and pool.threads == 1
    assert pool.strategy().min_size == pool.strategy().max_size == 1


def test_gpu_actor_falls_back_to_cpu(logical_gpu_cluster, dirty_catalog, tmp_path, minilm):
    import torch

    assert not torch.cuda.is_available()  # the point of this test: logical GPUs only
    out = tmp_path / "out"
    manifest = run(
        EmbedConfig(input=str(dirty_catalog), output=str(out), gpus_per_actor=1, num_actors=1)
    )
    assert manifest["rows_out"] == 6
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert got.shape == (6, 384) and np.isfinite(got).all()
    # The actor released its GPU: Ray Data tears the pool down asynchronously after the last
    # batch, so wait for it (bounded) rather than race it.
    wait_for_condition(lambda: ray.available_resources().get("GPU", 0) == 1, timeout=60)


def test_fp16_without_gpu_actors_is_refused(logical_gpu_cluster, dirty_catalog, tmp_path):
    from fashion_batch.errors import InputError

    config = EmbedConfig(
        input=str(dirty_catalog), output=str(tmp_path / "o"), gpus_per_actor=0, precision="fp16"
    )
    with pytest.raises(InputError, match="fp16 needs GPU"):
        run(config)
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
def test_fp16_on_cuda_matches_fp32(minilm):
    """On a real GPU, `auto` precision is fp16 and must stay within cosine 0.999 of fp32."""
    import torch

    from fashion_batch.encoders.models import Encoder, load_model

    assert torch.cuda.is_available()
    texts = ["Zara black pleated pants", "Vintage Levi's 501 denim jacket", "cute top 💕"] * 20
    fp16 = Encoder(load_model("builtin:minilm", "cuda", "auto")).encode(texts)
    fp32 = minilm.encode(texts)
    cos = (fp16 * fp32).sum(1) / np.linalg.norm(fp16, axis=1) / np.linalg.norm(fp32, axis=1)
    assert fp16.dtype == np.float32 and cos.min() >= 0.999
