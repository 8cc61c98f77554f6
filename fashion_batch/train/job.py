"""`fashion-batch train`: the seed fine-tune (MNRL over triplets) on N Ray Train workers.

Launch (see also `jobs/finetune.py` for `ray job submit`):

    fashion-batch train --triplets data/triplets/ --output models/fashion-seed             # 2 CPUs
    fashion-batch train --triplets s3://b/triplets/ --output /mnt/models/seed \
        --num-workers 4 --use-gpu                                                          # 4 GPUs

One module per concern; `run` here calls them in order:

    config.py      TrainConfig (the flags) and the recipe's constants
    data.py        read and check the triplets, split by anchor (driver); shard batches (workers)
    loop.py        train_loop_per_worker: [1] data, [2] model, [3] train, [4] report
    model.py       the seed model, its loss, optimiser and schedule; evaluations
    checkpoint.py  report and restore checkpoints; the injected failure
    card.py        training_metrics.json, the model card, the terminal summary
    job.py         validate, claim the run, launch the TorchTrainer, publish OUTPUT

Re-running the same command resumes: `storage_path` defaults to `ray_results/` beside OUTPUT and
`name` to `finetune-<basename of OUTPUT>`; `run.json` in the run dir records what the run trains
(data digest + hyper-parameters) and a re-run that differs is refused.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import pyarrow.fs as pafs

from fashion_batch.errors import InputError
from fashion_batch.io.fs import filesystem
from fashion_batch.runtime.ray import init_ray
from fashion_batch.train.card import summary
from fashion_batch.train.config import METRICS_FILE, RUN_FILE, TrainConfig
from fashion_batch.train.data import digest, read_triplets, split_triplets
from fashion_batch.train.loop import train_loop_per_worker


def run(config: TrainConfig) -> dict:
    """Validate, launch the TorchTrainer, publish the model to OUTPUT; returns training_metrics."""
    # Everything that can be wrong with the input is found before anything is written.
    train, held_out = _read_inputs(config)
    _claim_run(config, _fingerprint(config, train, held_out))
    # With the dashboard: Ray Train's placement-group cleaner polls the State API it serves.
    init_ray(include_dashboard=None)
    result = _trainer(config, _loop_config(config, train, held_out)).fit()
    metrics = _publish(result.checkpoint, config.output)
    print(summary(metrics))
    return metrics


def _read_inputs(config: TrainConfig) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, held-out) triplets, after checking the base model and OUTPUT; writes nothing."""
    from fashion_batch.encoders.models import resolve_model

    resolve_model(config.base_model, flag="--base-model")
    _check_output(config.output)
    data = read_triplets(config.triplets)
    if config.eval_triplets:
        train, held_out = data, read_triplets(config.eval_triplets, "--eval-triplets")
    else:
        train, held_out = split_triplets(data, config.eval_split, config.seed)
    if len(train["anchor"]) < config.batch_size:
        raise InputError(
            f"--triplets {config.triplets}: {len(train['anchor'])} training triplets, fewer than "
            f"one global batch of {config.batch_size}"
        )
    return train, held_out


def _check_output(output: str) -> None:
    """OUTPUT may be missing, empty, or an earlier `train` output (replaced); nothing else."""
    path = Path(output)
    if path.exists() and (
        not path.is_dir() or (any(path.iterdir()) and not (path / METRICS_FILE).exists())
    ):
        raise InputError(
            f"--output {output}: exists and is not an earlier train output; choose another dir"
        )


def _fingerprint(config: TrainConfig, train: dict, held_out: dict) -> dict:
    """What a run trains: the data and the settings that change the model (run.json)."""
    return {
        "data": digest([train, held_out]),
        **{
            k: getattr(config, k)
            for k in ("base_model", "epochs", "batch_size", "lr", "seed", "max_seq_length")
        },
    }


def _claim_run(config: TrainConfig, fingerprint: dict) -> None:
    """Write run.json in the run dir, or check that an existing run trains the same thing:
    resuming someone else's checkpoints with other data or settings would be silently wrong."""
    fs, root = filesystem(config.storage_path)
    run_dir = posixpath.join(root, config.name)
    path = posixpath.join(run_dir, RUN_FILE)
    if fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            previous = json.loads(f.read().decode())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise InputError(
                f"run {config.name!r} in {config.storage_path} was started with other "
                f"{', '.join(changed)}; pass another --name to start a new run"
            )
        return
    fs.create_dir(run_dir, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(fingerprint, indent=2, sort_keys=True).encode())


def _loop_config(config: TrainConfig, train: dict, held_out: dict) -> dict:
    """The config every worker gets: the settings, the data, the resolved gather flag."""
    gather = config.gather_across_devices
    return {
        **asdict(config),
        "gather_across_devices": config.num_workers > 1 if gather is None else gather,
        "train": train,
        "eval": held_out,
        "fail_marker": os.path.join(
            config.storage_path, config.name, f".injected-failure-{config.fail_at_step}"
        ),
    }


def _trainer(config: TrainConfig, loop_config: dict):
    """The TorchTrainer: N workers running `train_loop_per_worker`, checkpoints under
    storage_path/name (the last two kept), restarts up to max_failures."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            storage_path=config.storage_path,
            name=config.name,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": _worker_env()},
        ),
    )


def _worker_env() -> dict[str, str]:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE")
    env = {k: os.environ[k] for k in names if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _publish(checkpoint, output: str) -> dict:
    """Copy the final checkpoint's model dir to OUTPUT (via a temporary name beside it)."""
    with checkpoint.as_directory() as d:
        source = Path(d, "model")
        if not (source / METRICS_FILE).exists():
            raise RuntimeError(f"the last checkpoint {checkpoint.path} holds no final model")
        tmp = f"{output}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, tmp)
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    return json.loads(Path(output, METRICS_FILE).read_text())
