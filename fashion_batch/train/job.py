"""`fashion-batch train`: the seed fine-tune (MNRL over triplets) on N Ray Train workers.

Launch (see also `jobs/finetune.py` for `ray job submit`):

    fashion-batch train --triplets data/triplets/ --output models/fashion-seed             # 2 CPUs
    fashion-batch train --triplets s3://b/triplets/ --output /mnt/models/seed \
        --num-workers 4 --use-gpu                                                          # 4 GPUs

One module per concern; `run` here calls them in order:

    config.py      TrainConfig (the flags) and the recipe's constants
    data.py        read and check the triplets, split by anchor (driver); shard batches (workers)
    loop.py        train_loop_per_worker: [1] model, [2] trainer, [3] train, [4] report
    trainer.py     SentenceTransformerTrainer: global batches split over ranks, the NaN stop
    callbacks.py   the trainer's callbacks: loss record, epoch evaluation, Ray checkpoints
    model.py       the seed model and its loss; evaluations
    checkpoint.py  report and restore checkpoints; the injected failure
    card.py        training_metrics.json, the model card, the terminal summary
    publish.py     the quality gate, then OUTPUT replaced atomically (or the model set aside)
    job.py         validate, claim the run, launch the TorchTrainer, publish_or_reject

Re-running the same command resumes: `storage_path` defaults to `ray_results/` beside OUTPUT and
`name` to `finetune-<basename of OUTPUT>`; `run.json` in the run dir records what the run trains
(data digest, hyper-parameters, workers, gathering, GPU) and a re-run that differs is refused.

A run that would train zero steps is refused before Ray starts (exit 2); a NaN/inf loss stops it
with an error naming the step (exit 1), keeping the last good checkpoint and publishing nothing.

Quality gate: the base, the model at step 0 and every epoch are scored on the held-out retrieval
set (`evaluate/retrieval.py`); the best epoch by NDCG@10 is what is published, and only if it is
not below the base's NDCG@10 minus `--gate-margin`. Otherwise GateError (exit 3): OUTPUT stays as
it was and the refused model is kept in `OUTPUT.rejected-<name>/` for inspection.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict
from pathlib import Path

import pyarrow.fs as pafs

from fashion_batch.errors import InputError
from fashion_batch.evaluate.retrieval import Retrieval, from_catalog, from_triplets
from fashion_batch.io.fs import filesystem
from fashion_batch.runtime.faults import forwarded_env
from fashion_batch.runtime.nodes import check_shared_storage, cluster_nodes
from fashion_batch.runtime.ray import init_ray
from fashion_batch.train.batches import product_groups
from fashion_batch.train.checkpoint import NonFiniteLoss, take_stop_record
from fashion_batch.train.config import COLUMNS, METRICS_FILE, RUN_FILE, TrainConfig
from fashion_batch.train.data import count_global_batches, digest, read_triplets, split_triplets
from fashion_batch.train.loop import train_loop_per_worker
from fashion_batch.train.publish import publish_or_reject


def run(config: TrainConfig) -> dict:
    """Validate, launch the TorchTrainer, publish the model to OUTPUT; returns training_metrics."""
    # Everything that can be wrong with the input is found before anything is written.
    train, held_out, retrieval, mining = _read_inputs(config)
    check_shared_storage({"--storage-path": config.storage_path}, config.shared_fs, cluster_nodes())
    _claim_run(config, _fingerprint(config, train, held_out, retrieval))
    # With the dashboard: Ray Train's placement-group cleaner polls the State API it serves.
    init_ray(include_dashboard=None)
    take_stop_record(config.storage_path, config.name)  # stale: its driver died before reading it
    loop_config = {**_loop_config(config, train, held_out, retrieval), "mining": mining}
    result = _trainer(config, loop_config).fit()
    _raise_if_stopped(config, result)
    return publish_or_reject(result.checkpoint, config)


def _read_inputs(config: TrainConfig) -> tuple[dict, dict, Retrieval | None, dict | None]:
    """(train, held-out triplets, held-out retrieval set, mining report), after checking the
    base model and OUTPUT; writes nothing. The retrieval set is the queries against the whole
    catalog when given, else the held-out triplets, else None (nothing held out: no gate)."""
    from fashion_batch.encoders.models import resolve_model

    resolve_model(config.base_model, flag="--base-model")
    _check_output(config.output)
    data = read_triplets(config.triplets)
    if config.eval_triplets:
        train, held_out = data, read_triplets(config.eval_triplets, "--eval-triplets")
    elif config.eval_queries:  # evaluated on the queries: every triplet trains
        train, held_out = data, {c: [] for c in COLUMNS}
    else:
        train, held_out = split_triplets(data, config.eval_split, config.seed)
    retrieval = _retrieval(config, held_out)
    mining = None
    if config.mine_catalog:
        train, mining = _mine(config, train)
    _check_batches(config, train, held_out)
    return train, held_out, retrieval, mining


def _mine(config: TrainConfig, train: dict) -> tuple[dict, dict]:
    """Hard negatives from `--mine-catalog` with the base model (train/mine.py), on the driver:
    (train with them, the report for training_metrics.json)."""
    from fashion_batch.encoders.models import load_model
    from fashion_batch.train.mine import mine, read_catalog

    catalog = read_catalog(config.mine_catalog)
    base = load_model(config.base_model, precision="fp32")
    base.max_seq_length = min(base.max_seq_length, config.max_seq_length)
    mined, report = mine(
        train,
        catalog,
        base,
        range_max=config.mine_range,
        range_min=config.mine_skip,
        max_similarity=config.mine_max_similarity,
    )
    return mined, report.as_dict()


def _retrieval(config: TrainConfig, held_out: dict) -> Retrieval | None:
    if config.eval_queries:
        from fashion_batch.evaluate.job import read_catalog_texts, read_queries
        from fashion_batch.text import Template

        queries = read_queries(config.eval_queries)
        ids, texts, _ = read_catalog_texts(
            config.eval_catalog, "listing_id", Template("{title}. {description}")
        )
        retrieval = from_catalog(queries, ids, texts)
        if not retrieval.queries:
            raise InputError(
                f"--eval-queries {config.eval_queries}: no query has a relevant listing in "
                f"--eval-catalog {config.eval_catalog}"
            )
        return retrieval
    if held_out["anchor"]:
        return from_triplets(held_out["anchor"], held_out["positive"], held_out["negative"])
    return None


def _check_batches(config: TrainConfig, train: dict, held_out: dict) -> None:
    """At least one full global batch, counted the way the workers draw them (after blank rows,
    the held-out anchors, NO_DUPLICATES and drop_last): zero steps would publish the untrained
    head as if it were trained."""
    n = len(train["anchor"])
    batch = config.batch_size
    if n >= batch and count_global_batches(train, batch, config.seed):
        return
    distinct = "/".join(str(len(set(train[c]))) for c in COLUMNS)
    products = product_groups(train["positive"])["products"]
    raise InputError(
        f"--triplets {config.triplets}: {n} training triplets (blank rows dropped, "
        f"{len(held_out['anchor'])} held out for evaluation) with {distinct} distinct "
        f"anchor/positive/negative texts ({products} products) make 0 full batches, fewer than "
        f"one global batch of {batch} (--batch-size; {config.num_workers} worker(s) × "
        f"{config.per_device_batch_size}): a batch takes {batch} triplets that share no text and "
        "no product, and an incomplete one is dropped"
    )


def _check_output(output: str) -> None:
    """OUTPUT may be missing, empty, or an earlier `train` output (replaced); nothing else."""
    path = Path(output)
    if path.exists() and (
        not path.is_dir() or (any(path.iterdir()) and not (path / METRICS_FILE).exists())
    ):
        raise InputError(
            f"--output {output}: exists and is not an earlier train output; choose another dir"
        )


def _gathers(config: TrainConfig) -> bool:
    """Whether MNRL gathers candidates across workers (default: with more than one worker)."""
    return config.num_workers > 1 and config.gather_across_devices is not False


def _fingerprint(
    config: TrainConfig, train: dict, held_out: dict, retrieval: Retrieval | None
) -> dict:
    """What a run trains (run.json): the data and every setting that changes the model. Workers,
    gathering and the GPU count too: they decide which negatives each anchor meets and the
    precision, so resuming with other ones would splice two different trainings together. The
    held-out retrieval set too: it picks the epoch that is published."""
    settings = ("base_model", "epochs", "batch_size", "lr", "seed", "max_seq_length")
    settings += ("head_init", "normalize_output")
    eval_set = None
    if retrieval is not None:
        relevant = {q: sorted(r) for q, r in retrieval.relevant.items()}
        eval_set = [retrieval.queries, retrieval.corpus, relevant]
    return {
        "data": digest([train, held_out]),
        "eval_set": digest(eval_set),
        **{k: getattr(config, k) for k in (*settings, "num_workers", "use_gpu")},
        "gather_across_devices": _gathers(config),
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


def _loop_config(
    config: TrainConfig, train: dict, held_out: dict, retrieval: Retrieval | None
) -> dict:
    """The config every worker gets: the settings, the data, the resolved gather flag."""
    return {
        **asdict(config),
        "gather_across_devices": _gathers(config),
        "train": train,
        "eval": held_out,
        "retrieval": retrieval,
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
    """The driver's hub settings and fault-injection variables (tests), for every worker."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE")
    env = {k: os.environ[k] for k in names if k in os.environ} | forwarded_env()
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _raise_if_stopped(config: TrainConfig, result) -> None:
    """The workers stop together at a non-finite loss and report nothing after it (loop.py), so
    Ray Train sees a finished run; the stop record rank 0 left says why. Nothing is published."""
    stop = take_stop_record(config.storage_path, config.name)
    if stop is None:
        return
    kept = (
        f"keeps its last good checkpoint (step {result.metrics['step']}); a re-run with the "
        "same settings resumes from it"
        if result.checkpoint
        else "has no checkpoint yet"
    )
    raise NonFiniteLoss(
        f"training stopped at step {stop['step']}: the {stop['what']} was {stop['value']}; "
        f"nothing was published to {config.output}. Run {config.name!r} in "
        f"{config.storage_path} {kept}; to train with a lower --lr or other data, pass another "
        "--name"
    )
