"""The in-process runner (embed/local.py): when `--runner auto` picks it, that it writes what the
Ray runner writes, and that a killed local run resumes from its committed units."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashion_batch.embed import EmbedConfig, local, run
from fashion_batch.errors import InputError
from tests.helpers import DIRTY_ROWS, run_cli


@pytest.fixture
def small_machine(monkeypatch):
    """A 2-CPU machine without a GPU, with no Ray to join: where auto runs locally."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(local, "cpus", lambda: 2)
    monkeypatch.setattr(local, "gpu_here", lambda: False)
    monkeypatch.setattr(local, "_ray_cluster_here", lambda: False)
    monkeypatch.setattr(local, "ray_running", lambda: False)
    return monkeypatch


def _config(**kw) -> EmbedConfig:
    return EmbedConfig(input="in", output="out", **kw)


def test_auto_runs_locally_only_when_nothing_asks_for_ray(small_machine):
    assert local.choose(_config()) == "local"
    assert local.choose(_config(threads_per_actor=1)) == "local"  # threads are not a pool
    asks = {
        "a Ray to join": lambda m: m.setenv("RAY_ADDRESS", "10.0.0.1:6379"),
        "a connected driver": lambda m: m.setattr(local, "ray_running", lambda: True),
        "a `ray start` cluster": lambda m: m.setattr(local, "_ray_cluster_here", lambda: True),
        "a GPU": lambda m: m.setattr(local, "gpu_here", lambda: True),
        "many cores": lambda m: m.setattr(local, "cpus", lambda: local.LOCAL_MAX_CPUS + 1),
    }
    for what, ask in asks.items():
        with pytest.MonkeyPatch.context() as m:
            ask(m)
            assert local.choose(_config()) == "ray", what
            assert local.choose(_config(runner="local")) == "local", what  # asked for: kept
    for flags in ({"num_actors": 2}, {"min_actors": 1, "max_actors": 2}, {"cpus_per_actor": 1.0}):
        assert local.choose(_config(**flags)) == "ray", flags
    assert local.choose(_config(runner="ray")) == "ray"
    # RAY_ADDRESS=local is Ray's "start a Ray of your own, join none" (a `ray start` one included)
    small_machine.setenv("RAY_ADDRESS", "local")
    small_machine.setattr(local, "_ray_cluster_here", lambda: True)
    assert local.choose(_config()) == "local"


@pytest.mark.parametrize(
    "flags, named",
    [({"num_actors": 2}, "--num-actors"), ({"gpus_per_actor": 1.0}, "--gpus-per-actor")],
)
def test_local_runner_refuses_actor_pool_flags(flags, named):
    with pytest.raises(InputError, match=f"{named} sizes Ray's actor pool"):
        _config(runner="local", **flags)


def test_gpu_here_honours_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local.gpu_here() is False


def test_auto_run_on_a_small_machine_never_starts_ray(small_machine, dirty_catalog, tmp_path):
    """The conftest's _no_stray_ray fails this test if the run starts Ray."""
    out = tmp_path / "out"
    manifest = run(EmbedConfig(input=str(dirty_catalog), output=str(out), rows_per_unit=3))
    assert manifest["runner"] == "local"
    assert manifest["rows_out"] == sum(1 for r in DIRTY_ROWS if r[3] is None)
    assert manifest["nodes"] == {"local": {"actors": 1, "units": manifest["units"]["total"]}}
    assert manifest["ledger"]["actors"]["count"] == 1
    assert manifest["gate"]["parity"]["min_cos"] > 0.9999


def _read(out) -> tuple[pa.Table, pa.Table]:
    parts = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("listing_id")
    quarantine = pq.read_table(sorted((out / "quarantine").glob("part-*.parquet")))
    return parts, quarantine.sort_by("listing_id")


def test_local_and_ray_runners_write_the_same_output(ray_cluster, dirty_catalog, tmp_path):
    outs = {}
    for runner in ("ray", "local"):
        config = EmbedConfig(
            input=str(dirty_catalog), output=str(tmp_path / runner), rows_per_unit=3, runner=runner
        )
        assert run(config)["runner"] == runner
        outs[runner] = _read(tmp_path / runner)
    (ray_parts, ray_q), (local_parts, local_q) = outs["ray"], outs["local"]
    assert local_parts.schema == ray_parts.schema
    assert local_parts.column("listing_id").equals(ray_parts.column("listing_id"))
    assert local_q.equals(ray_q)
    ray_vectors = np.stack(ray_parts.column("embedding").to_numpy(zero_copy_only=False))
    local_vectors = np.stack(local_parts.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(local_vectors, ray_vectors, atol=1e-5)  # threads differ


def test_a_killed_local_run_resumes_from_its_committed_units(dirty_catalog, tmp_path):
    out = tmp_path / "out"
    argv = ["embed", "--input", str(dirty_catalog), "--output", str(out)]
    argv += ["--rows-per-unit", "1", "--runner", "local"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    fault = {"FASHION_BATCH_FAULT_KILL_AT": "4", "FASHION_BATCH_FAULT_MARKER": str(tmp_path / "m")}
    killed = run_cli(argv, {**env, **fault})
    assert killed.returncode == 1, killed.stderr
    assert not (out / "manifest.json").exists()
    resumed = run_cli(argv, env)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runner"] == "local"
    assert 1 <= manifest["units"]["resumed"] < manifest["units"]["total"]
    parts, quarantine = _read(out)
    ids = parts.column("listing_id").to_pylist()
    assert sorted(ids) == sorted(r[0] for r in DIRTY_ROWS if r[3] is None)  # each once
    assert len(quarantine) == sum(1 for r in DIRTY_ROWS if r[3])
