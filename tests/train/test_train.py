"""train: config and data checks without Ray, then real Ray Train runs on 2 CPU workers (gloo).

The runs share one local cluster and three trainings (module fixtures), each asserted on by
several tests:

* `single`: 1 worker, global batch 16;
* `gathered_resumed`: 2 workers × 8 with MNRL gathering across workers (the default), killed
  once after the first checkpoint and resumed from it;
* `ungathered`: 2 workers × 8 without gathering, one epoch; its first attempt is stopped by a
  NaN loss injected at step 3 and the re-run resumes from the last good checkpoint (step 2).

All three train MiniLM with dropout switched off (a copy of the builtin model with dropout 0 in
config.json), so "2×8 equals 1×16" is exact up to float reduction order, not up to dropout noise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fashion_batch.errors import InputError, UserError
from fashion_batch.options import add_arguments, from_args
from fashion_batch.train import job, publish
from fashion_batch.train.config import COLUMNS, METRICS_FILE, TrainConfig
from fashion_batch.train.data import read_triplets, shard, split_triplets
from fashion_batch.train.job import run
from tests.helpers import COLOURS, ITEMS, make_triplets
from tests.train.record_checks import check_record

EPOCHS = 2
STEPS_PER_EPOCH = 4  # 80 triplets, 16 anchors held out, 64 / 16


@pytest.fixture(scope="module")
def triplets_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("triplets") / "train.parquet"
    pq.write_table(pa.table(make_triplets()), path)
    return str(path)


# ---------------------------------------------------------------------------- without Ray


def test_config_defaults_are_the_seed_recipe(tmp_path):
    config = TrainConfig(triplets="t.parquet", output=str(tmp_path / "model"))
    assert config.base_model == "sentence-transformers/msmarco-distilbert-base-dot-prod-v3"
    assert (config.epochs, config.batch_size, config.lr, config.seed) == (10, 16, 5e-5, 42)
    # The seed's head init is one flag away; the default keeps the base's geometry at step 0.
    assert (config.head_init, config.gate_margin) == ("preserve", 0.0)
    assert config.normalize_output is True
    assert config.per_device_batch_size == 8  # 2 workers share the global batch of 16
    assert config.storage_path == str(tmp_path / "ray_results")
    assert config.name == "finetune-model"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_workers": 3}, "global batch and must be divisible by --num-workers 3"),
        ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
        ({"epochs": 0}, "--epochs"),
        ({"lr": 0.0}, "--lr"),
        ({"eval_split": 1.0}, "--eval-split"),
        ({"output": "s3://bucket/model"}, "--output must be a local directory"),
        ({"max_failures": -2}, "--max-failures"),
        ({"name": "a/b"}, "--name"),
        ({"head_init": "zeros"}, "--head-init must be one of preserve, random"),
        ({"gate_margin": -0.1}, "--gate-margin"),
        ({"eval_catalog": "c/"}, "--eval-queries and --eval-catalog go together"),
        ({"mine_skip": 50}, "--mine-skip 50 must be >= 0 and below --mine-range 50"),
        ({"mine_max_similarity": 0.0}, "--mine-max-similarity"),
    ],
)
def test_bad_settings_are_input_errors(tmp_path, changes, message):
    kwargs = {"triplets": "t.parquet", "output": str(tmp_path / "m"), **changes}
    with pytest.raises(InputError, match=message):
        TrainConfig(**kwargs)


def test_args_round_trip(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    argv = ["--triplets", "t/", "--output", str(tmp_path / "m"), "--num-workers", "4"]
    argv += ["--use-gpu", "--epochs", "3", "--no-gather-across-devices", "--max-failures", "2"]
    config = from_args(TrainConfig, parser.parse_args(argv))
    assert config == TrainConfig(
        triplets="t/",
        output=str(tmp_path / "m"),
        num_workers=4,
        use_gpu=True,
        epochs=3,
        gather_across_devices=False,
        max_failures=2,
    )


def test_read_triplets_parquet_jsonl_and_seed_names(tmp_path):
    data = make_triplets()
    seed_names = {f"sentence_{i}": data[c] for i, c in enumerate(COLUMNS)}
    pq.write_table(pa.table(seed_names), tmp_path / "seed.parquet")
    with open(tmp_path / "t.jsonl", "w") as f:
        for i in range(len(data["anchor"])):
            f.write(json.dumps({c: data[c][i] for c in COLUMNS}) + "\n")
    assert read_triplets(str(tmp_path / "seed.parquet")) == data
    assert read_triplets(str(tmp_path / "t.jsonl")) == data


def test_read_triplets_drops_blank_rows_and_names_bad_input(tmp_path):
    pq.write_table(
        pa.table(
            {"anchor": ["a", " ", "c"], "positive": ["p", "q", None], "negative": list("xyz")}
        ),
        tmp_path / "t.parquet",
    )
    assert read_triplets(str(tmp_path / "t.parquet")) == {
        "anchor": ["a"],
        "positive": ["p"],
        "negative": ["x"],
    }
    pq.write_table(pa.table({"anchor": ["a"], "positive": ["p"]}), tmp_path / "pairs.parquet")
    with pytest.raises(InputError, match=r"pairs.parquet: missing column 'negative'"):
        read_triplets(str(tmp_path / "pairs.parquet"))
    with pytest.raises(InputError, match="nothing.parquet: no such file"):
        read_triplets(str(tmp_path / "nothing.parquet"))


def test_split_holds_out_whole_anchors_deterministically():
    data = make_triplets()
    data = {c: v + v[:10] for c, v in data.items()}  # ten anchors appear twice
    train, held_out = split_triplets(data, 0.2, seed=42)
    assert set(train["anchor"]).isdisjoint(held_out["anchor"])
    assert len(train["anchor"]) + len(held_out["anchor"]) == 90
    assert len(set(held_out["anchor"])) == 16  # 20% of 80 distinct anchors
    assert split_triplets(data, 0.2, seed=42) == (train, held_out)
    assert split_triplets(data, 0.2, seed=7) != (train, held_out)


def test_shards_concatenate_to_the_global_batch_in_rank_order():
    batch = list(range(100, 116))
    assert shard(batch, 0, 2) == batch[:8] and shard(batch, 1, 2) == batch[8:]
    assert sum((shard(batch, r, 4) for r in range(4)), []) == batch
    assert shard(batch, 0, 1) == batch


def test_bad_input_fails_before_anything_is_written(tmp_path):
    pq.write_table(pa.table({"anchor": ["a"], "positive": ["p"]}), tmp_path / "pairs.parquet")
    pairs = str(tmp_path / "pairs.parquet")
    config = TrainConfig(triplets=pairs, output=str(tmp_path / "m"), base_model="builtin:minilm")
    with pytest.raises(InputError, match="missing column 'negative'"):
        run(config)
    assert not (tmp_path / "m").exists() and not (tmp_path / "ray_results").exists()

    foreign = tmp_path / "not-a-model"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an earlier train output"):
        run(TrainConfig(triplets=pairs, output=str(foreign), base_model="builtin:minilm"))


def test_unloadable_base_model_names_the_train_flag(tmp_path, triplets_file, capsys):
    from fashion_batch.cli import main

    argv = ["train", "--triplets", triplets_file, "--output", str(tmp_path / "m")]
    assert main([*argv, "--base-model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "--base-model" in err and "no such directory" in err and "Traceback" not in err
    assert main([*argv, "--base-model", "builtin:nope"]) == 2
    assert "--base-model: unknown builtin model" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_too_few_triplets_for_one_global_batch(tmp_path, triplets_file):
    config = TrainConfig(
        triplets=triplets_file, output=str(tmp_path / "m"), base_model="builtin:minilm"
    )
    config.batch_size = 128  # more than the 64 training triplets
    with pytest.raises(InputError, match="fewer than one global batch of 128"):
        run(config)


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray started: the input should have been refused before")


def test_zero_full_batches_is_exit_2_with_the_counts(tmp_path, monkeypatch, capsys):
    """80 triplets, but only 8 distinct queries (10 listings each): 2 queries are held out, and
    a NO_DUPLICATES batch of 16 can hold at most 6 rows (one per remaining query), so the
    workers would draw 0 batches and publish the untrained head."""
    from fashion_batch.cli import main

    rows = {c: [] for c in COLUMNS}
    for colour, (item, material) in itertools.product(COLOURS, ITEMS):
        rows["anchor"].append(f"{colour} things")
        rows["positive"].append(f"{material} {item} in {colour}")
        rows["negative"].append(f"{material} {item}, not {colour}")
    pq.write_table(pa.table(rows), tmp_path / "t.parquet")
    monkeypatch.setattr(job, "init_ray", _no_ray)
    argv = ["train", "--triplets", str(tmp_path / "t.parquet"), "--output", str(tmp_path / "m")]
    assert main([*argv, "--base-model", "builtin:minilm"]) == 2
    err = capsys.readouterr().err
    assert "60 training triplets" in err and "20 held out" in err
    assert "6/60/60 distinct" in err and "0 full batches" in err
    assert "fewer than one global batch of 16" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "ray_results").exists()


def _model_dir(path: Path, marker: str) -> Path:
    path.mkdir(parents=True)
    (path / METRICS_FILE).write_text(json.dumps({"model": marker}))
    (path / "model.safetensors").write_text(marker)
    return path


def test_publish_keeps_the_previous_model_until_the_new_one_is_in(tmp_path, monkeypatch):
    output = _model_dir(tmp_path / "models" / "seed", "old")  # an earlier train output
    # A finished run's model dir, as `_publish` gets it from the last checkpoint.
    source = _model_dir(tmp_path / "checkpoint" / "model", "new")
    new_metrics = {"model": "new"}

    def model_at_output() -> str:
        return json.loads((output / METRICS_FILE).read_text())["model"]

    def beside() -> list[str]:
        return sorted(p.name for p in output.parent.iterdir())

    # The copy dies half-way: the old model is untouched, and no partial copy is left beside it.
    real_copytree = shutil.copytree

    def copy_half(src, dst, **kwargs):
        Path(dst).mkdir()
        (Path(dst) / METRICS_FILE).write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", copy_half)
    with pytest.raises(OSError, match="disk full"):
        publish.publish(source, str(output), new_metrics)
    assert model_at_output() == "old" and beside() == ["seed"]
    monkeypatch.setattr(shutil, "copytree", real_copytree)

    # Renaming the complete new model in fails: the old model is still (or again) at OUTPUT.
    real_rename, real_replace = os.rename, os.replace

    def refuse_new_model(rename):
        def wrapped(src, dst, *args, **kwargs):
            metrics = Path(src, METRICS_FILE)
            if Path(dst) == output and metrics.exists() and "new" in metrics.read_text():
                raise OSError("rename failed")
            return rename(src, dst, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(os, "rename", refuse_new_model(real_rename))
    monkeypatch.setattr(os, "replace", refuse_new_model(real_replace))
    with pytest.raises(OSError, match="rename failed"):
        publish.publish(source, str(output), new_metrics)
    assert model_at_output() == "old" and beside() == ["seed"]
    monkeypatch.setattr(os, "rename", real_rename)
    monkeypatch.setattr(os, "replace", real_replace)

    # While the new model is copied, OUTPUT still holds the complete old one; then it is swapped.
    def copy_and_look(src, dst, **kwargs):
        assert model_at_output() == "old"
        return real_copytree(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copy_and_look)
    publish.publish(source, str(output), new_metrics)
    assert model_at_output() == "new" and beside() == ["seed"]


def _scores(ndcg: float) -> dict:
    return {"ndcg@10": ndcg, "mrr@10": ndcg, "queries": 5}


@pytest.mark.parametrize(
    "base, after, margin, passed",
    [
        (0.60, 0.65, 0.0, True),
        (0.60, 0.60, 0.0, True),  # equal is not below
        (0.60, 0.59, 0.0, False),
        (0.60, 0.59, 0.02, True),  # within the margin
        (0.60, 0.57, 0.02, False),
    ],
)
def test_gate_compares_published_ndcg_with_the_base_minus_the_margin(base, after, margin, passed):
    metrics = {"eval_base": _scores(base), "eval_after": _scores(after), "published_epoch": 2}
    record = publish.gate(metrics, margin)
    assert record["passed"] is passed
    assert record["base"] == base and record["fine_tuned"] == after
    assert f"{base:.4f}" in record["verdict"] and f"{after:.4f}" in record["verdict"]


def test_gate_without_held_out_evaluation_passes_and_says_so():
    record = publish.gate({"eval_base": None, "eval_after": None}, 0.0)
    assert record["passed"] is True and "skipped" in record["verdict"]


def test_eval_queries_against_the_whole_catalog(tmp_path, triplets_file):
    """--eval-queries/--eval-catalog: the held-out set is the queries against every listing the
    embed job would keep, not the held-out triplets."""
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    pq.write_table(
        pa.table(
            {
                "listing_id": pa.array([1, 2, 3, 4], pa.int64()),
                "title": ["red wool coat", "blue denim jeans", "  ", "black leather boots"],
                "description": ["warm", "straight leg", None, "worn twice"],
            }
        ),
        catalog / "part-0.parquet",
    )
    queries = tmp_path / "queries.jsonl"
    lines = [
        {"query_id": "a", "query": "warm coat", "relevant_ids": [1, 99]},
        {"query_id": "b", "query": "boots", "relevant_ids": [4]},
        {"query_id": "c", "query": "blank listing", "relevant_ids": [3]},  # quarantined: dropped
    ]
    queries.write_text("".join(json.dumps(q) + "\n" for q in lines))
    config = TrainConfig(
        triplets=triplets_file,
        output=str(tmp_path / "m"),
        base_model="builtin:minilm",
        eval_queries=str(queries),
        eval_catalog=str(catalog),
    )
    train, _, retrieval, mining = job._read_inputs(config)
    assert mining is None and len(train["anchor"]) == 80  # no split: the queries evaluate
    assert retrieval.source == "catalog"
    assert retrieval.corpus == {
        "1": "red wool coat. warm",
        "2": "blue denim jeans. straight leg",
        "4": "black leather boots. worn twice",
    }
    assert retrieval.queries == {"a": "warm coat", "b": "boots"}
    assert retrieval.relevant == {"a": {"1"}, "b": {"4"}}
    with pytest.raises(InputError, match="--eval-queries and --eval-catalog go together"):
        TrainConfig(triplets=triplets_file, output=str(tmp_path / "m"), eval_queries="q.jsonl")

    # --mine-catalog: every negative is replaced by a listing of the catalog (or kept), on the
    # driver with the base model, and the report says what each filter removed.
    config.mine_catalog = str(catalog)
    mined, mining = job._mine(config, train)
    assert mined["anchor"] == train["anchor"] and mined["positive"] == train["positive"]
    listings = set(retrieval.corpus.values())
    assert all(n in listings or n in train["negative"] for n in mined["negative"])
    assert mining["triplets"] == 80 and mining["mined"] + mining["kept_own"] == 80
    assert mining["positives_not_in_catalog"] == 80  # the triplets' listings are not in it
    assert mining["candidates"] == sum(mining["removed"].values()) + mining["passed"]
    # Three listings cannot give 80 triplets distinct negatives: refused before Ray, not a
    # run that trains on no batch.
    with pytest.raises(InputError, match="0 full batches"):
        job._read_inputs(config)


# ---------------------------------------------------------------------------- head init


def _pairs() -> list[str]:
    """A few hundred listing-like texts: every pair of them is compared."""
    texts = [f"{c} {i}, size {s}" for c in COLOURS for i, _ in ITEMS for s in ("S", "XL")]
    return texts[::4]  # 40 texts: 780 distinct pairs


def _cosines(model, texts: list[str]) -> torch.Tensor:
    from sentence_transformers.util import cos_sim

    emb = model.encode(texts, convert_to_tensor=True, batch_size=64)  # (n, dim)
    return cos_sim(emb, emb)  # (n, n)


def _step0(base: str, head_init: str, seed: int = 42):
    """The seed architecture as `build_training` builds it, before its first step."""
    from transformers import set_seed

    from fashion_batch.encoders.models import build_seed_model
    from fashion_batch.train.model import init_head

    set_seed(seed)
    model = build_seed_model(base, max_seq_length=64)
    init_head(model[2], head_init)
    return model.eval()


@pytest.mark.parametrize("which", ["minilm", "tiny_distilbert"])
def test_preserving_head_keeps_every_cosine_of_the_base(which, tiny_distilbert_dir):
    from sentence_transformers import SentenceTransformer

    from fashion_batch.encoders.models import resolve_model

    base_dir = resolve_model("builtin:minilm") if which == "minilm" else tiny_distilbert_dir
    # The base as published: MiniLM with its Normalize module; the DistilBERT with mean pooling.
    # Loaded here, not the session's `minilm` fixture: max_seq_length is set on it below, and a
    # shared model left at 64 tokens broke a later parity test on a long text.
    base = SentenceTransformer(base_dir, device="cpu")
    base.max_seq_length = 64
    step0 = _step0(base_dir, "preserve")
    weight = step0[2].linear.weight.detach()  # (768, d)
    d = weight.shape[1]
    assert weight.shape[0] == 768 and d < 768
    torch.testing.assert_close(weight.T @ weight, torch.eye(d), atol=1e-5, rtol=0)
    texts = _pairs()
    diff = (_cosines(base, texts) - _cosines(step0, texts)).abs().max().item()
    assert diff < 1e-5
    # The seed's random head does not: that is what the preserving init fixes.
    random_diff = (_cosines(base, texts) - _cosines(_step0(base_dir, "random"), texts)).abs()
    assert random_diff.max().item() > 1e-2


def test_preserving_head_on_a_768_d_base_is_the_identity(tmp_path, minilm_dir):
    from sentence_transformers import SentenceTransformer

    from fashion_batch.encoders.models import random_distilbert

    base_dir = random_distilbert(
        tmp_path / "d768", minilm_dir, dim=768, n_layers=1, n_heads=2, hidden_dim=64, seed=0
    )
    step0 = _step0(base_dir, "preserve")
    assert torch.equal(step0[2].linear.weight.detach(), torch.eye(768))
    base = SentenceTransformer(base_dir, device="cpu")
    base.max_seq_length = 64
    texts = _pairs()
    assert (_cosines(base, texts) - _cosines(step0, texts)).abs().max().item() < 1e-5


def test_normalize_output_appends_normalize_and_off_is_the_seeds_module_list(minilm_dir):
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    from fashion_batch.train.model import build_model

    settings = {"max_seq_length": 64, "head_init": "preserve"}
    seed = build_model(minilm_dir, {**settings, "normalize_output": False})
    assert [type(m) for m in seed] == [Transformer, Pooling, Dense]
    ours = build_model(minilm_dir, {**settings, "normalize_output": True}).eval()
    assert [type(m) for m in ours] == [Transformer, Pooling, Dense, Normalize]
    assert ours.similarity_fn_name == "dot"
    texts = _pairs()
    emb = ours.encode(texts, convert_to_tensor=True)  # (n, 768)
    torch.testing.assert_close(ours.similarity(emb, emb), _cosines(ours, texts))


def test_random_head_is_the_seed_recipe_exactly(minilm_dir):
    """`--head-init random` leaves nn.Linear's seeded init alone: the same weights as building
    the seed architecture after `set_seed(seed)`, as the seed's own training did."""
    from transformers import set_seed

    from fashion_batch.encoders.models import build_seed_model

    set_seed(42)
    seed_head = build_seed_model(minilm_dir, max_seq_length=64)[2].linear.weight
    ours = _step0(minilm_dir, "random")[2].linear.weight
    assert torch.equal(ours, seed_head)
    assert not torch.equal(_step0(minilm_dir, "preserve")[2].linear.weight, seed_head)


# ---------------------------------------------------------------------------- Ray Train runs


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    return ray_cluster


@pytest.fixture(scope="module")
def minilm_no_dropout(tmp_path_factory, minilm_dir) -> str:
    d = tmp_path_factory.mktemp("minilm-no-dropout")
    for f in Path(minilm_dir).iterdir():
        if f.name != "config.json":
            (d / f.name).symlink_to(f)
    config = json.loads((Path(minilm_dir) / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (d / "config.json").write_text(json.dumps(config))
    return str(d)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


def tiny_config(workdir: Path, triplets: str, base: str, name: str, **changes) -> TrainConfig:
    settings = dict(
        triplets=triplets,
        output=str(workdir / name),
        base_model=base,
        epochs=EPOCHS,
        max_seq_length=32,
        logging_steps=1,
        storage_path=str(workdir / "ray_results"),
        name=name,
    )
    return TrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def single(cluster, workdir, triplets_file, minilm_no_dropout) -> tuple[TrainConfig, dict]:
    config = tiny_config(
        workdir, triplets_file, minilm_no_dropout, "single", num_workers=1, checkpoint_steps=100
    )
    return config, run(config)


@pytest.fixture(scope="module")
def gathered_resumed(
    cluster, workdir, triplets_file, minilm_no_dropout
) -> tuple[TrainConfig, dict]:
    """2 workers with gathering; rank 0 dies once after step 5, one step past the end-of-epoch
    checkpoint at step 4, and the run restarts from that checkpoint."""
    config = tiny_config(
        workdir,
        triplets_file,
        minilm_no_dropout,
        "gathered",
        fail_at_step=STEPS_PER_EPOCH + 1,
        max_failures=1,
    )
    return config, run(config)


@pytest.fixture(scope="module")
def ungathered(cluster, workdir, triplets_file, minilm_no_dropout) -> tuple[dict, dict]:
    """2 workers without gathering, one epoch, a checkpoint every 2 steps. The first attempt gets
    a NaN loss on rank 0 at step 3 and must stop; the re-run (same settings, no injected NaN)
    resumes and finishes. Returns (metrics of the re-run, what the stopped attempt left)."""
    config = tiny_config(
        workdir,
        triplets_file,
        minilm_no_dropout,
        "ungathered",
        epochs=1,
        gather_across_devices=False,
        checkpoint_steps=2,
    )
    try:
        run(TrainConfig(**{**config.__dict__, "nan_at_step": 3}))
        error = None
    except Exception as e:  # asserted on in test_non_finite_loss_stops_the_run
        error = e
    run_dir = Path(config.storage_path, config.name)
    stopped = {
        "error": error,
        "published": Path(config.output).exists(),
        "checkpoint_steps": sorted(
            json.loads(p.read_text())["step"] for p in run_dir.rglob("state.json")
        ),
    }
    return run(config), stopped


def losses(metrics: dict, steps: int = EPOCHS * STEPS_PER_EPOCH) -> np.ndarray:
    """The loss of every step, checking that each step was logged exactly once."""
    assert [entry["step"] for entry in metrics["loss"]] == list(range(1, steps + 1))
    return np.array([entry["loss"] for entry in metrics["loss"]])


def test_two_workers_with_gathering_train_like_one(single, gathered_resumed):
    _, one = single
    _, two = gathered_resumed
    assert one["num_workers"] == 1 and one["per_device_batch_size"] == 16
    assert two["num_workers"] == 2 and two["per_device_batch_size"] == 8
    assert two["gather_across_devices"] is True
    # Same init, same global batches, same 32 candidates per anchor: the same loss, step by step,
    # including the steps after the restart (weights, optimiser and schedule were restored).
    np.testing.assert_allclose(losses(two), losses(one), atol=1e-4, rtol=0)
    assert two["eval_before"] == pytest.approx(one["eval_before"])
    # The published base is evaluated once, before training; a resumed run keeps that number.
    assert two["eval_base"] == pytest.approx(one["eval_base"])


def test_without_gathering_each_worker_sees_only_its_own_negatives(single, ungathered):
    _, one = single
    metrics, _ = ungathered
    assert metrics["gather_across_devices"] is False
    # 16 candidates per anchor instead of 32, a subset: the softmax denominator is smaller.
    assert losses(metrics, STEPS_PER_EPOCH)[0] < losses(one)[0] - 0.05


def test_worker_failure_resumes_from_the_last_checkpoint(gathered_resumed, workdir):
    _, metrics = gathered_resumed
    assert (
        workdir / "ray_results" / "gathered" / f".injected-failure-{STEPS_PER_EPOCH + 1}"
    ).exists()
    # The second attempt started at the checkpoint (step 4), not at 0: epoch 1 was not redone.
    assert [a["start_step"] for a in metrics["attempts"]] == [0, STEPS_PER_EPOCH]
    # Steps 1-4 come from the checkpoint, 5-8 from the second attempt: none twice, none lost.
    losses(metrics)
    assert metrics["steps"] == EPOCHS * STEPS_PER_EPOCH


def test_loss_falls_and_the_saved_model_is_the_seed_architecture(gathered_resumed):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    config, metrics = gathered_resumed
    loss = losses(metrics)
    assert loss[-STEPS_PER_EPOCH:].mean() < 0.5 * loss[:STEPS_PER_EPOCH].mean()
    out = Path(config.output)
    assert json.loads((out / "training_metrics.json").read_text()) == metrics
    assert "fashion-batch train" in (out / "README.md").read_text()
    assert list(out.rglob("*.safetensors")) and not list(out.rglob("*.bin"))
    model = SentenceTransformer(str(out), device="cpu")
    dense = model[2]
    assert isinstance(dense, Dense) and dense.linear.out_features == 768
    assert dense.linear.bias is None
    assert isinstance(dense.activation_function, torch.nn.Identity)
    assert model.similarity_fn_name == "dot"
    assert model.encode(["red wool coat", "white sneakers"]).shape == (2, 768)
    # Unit vectors (the Normalize module): the users' dot product ranks like the trained cosine.
    assert isinstance(model[3], Normalize) and len(model) == 4
    norms = np.linalg.norm(model.encode(["red wool coat", "a much longer text " * 5]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    keys = {"ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100"}
    keys |= {"cosine_ndcg@10", "dot_ndcg@10", "similarity", "queries", "corpus"}
    for key in ("eval_base", "eval_before", "eval_after"):
        assert set(metrics[key]) == keys
        assert metrics[key]["queries"] == 16 and metrics[key]["corpus"] == 32
        assert metrics[key]["dot_ndcg@10"] == pytest.approx(metrics[key]["cosine_ndcg@10"])
    assert metrics["eval_base"]["similarity"] == "cosine"  # MiniLM as published
    assert metrics["eval_after"]["similarity"] == "dot"  # the seed architecture's
    assert metrics["eval_set"]["source"] == "triplets" and metrics["eval_set"]["queries"] == 16
    assert metrics["normalize_output"] is True
    assert metrics["gate"]["passed"] is True


def test_published_model_has_the_card_tensorboard_log_and_plot(gathered_resumed):
    """Across the restart: the card, the event file and the plot hold every step once."""
    config, metrics = gathered_resumed
    check_record(Path(config.output), metrics, asdict(config))
    # Every distinct positive is its own product here: no draw deferred for a product.
    assert metrics["batching"]["products"] == metrics["train_triplets"]
    assert metrics["batching"]["epochs"] == [
        {
            "epoch": e,
            "batches": STEPS_PER_EPOCH,
            "deferred_same_text": 0,
            "deferred_same_product": 0,
        }
        for e in range(1, EPOCHS + 1)
    ]


def test_step_0_ranks_like_the_base_and_the_best_epoch_is_published(single, gathered_resumed):
    for _, metrics in (single, gathered_resumed):
        assert metrics["head_init"] == "preserve"
        for m in ("ndcg@10", "mrr@10", "recall@10", "map@100"):
            assert metrics["eval_before"][m] == pytest.approx(metrics["eval_base"][m], abs=1e-4)
        # Every epoch is scored once, also across the restart of `gathered_resumed`.
        epochs = metrics["eval_epochs"]
        assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
        best = max(epochs, key=lambda e: (e["ndcg@10"], -e["epoch"]))
        assert metrics["published_epoch"] == best["epoch"]
        published = {k: v for k, v in best.items() if k not in ("epoch", "step")}
        assert metrics["eval_after"] == published


def test_rerun_with_the_same_name_continues_instead_of_starting_over(single):
    config, metrics = single
    shutil.rmtree(config.output)
    again = run(config)
    assert again == metrics  # nothing retrained: the finished run's model is published again
    assert len(again["attempts"]) == 1
    assert (Path(config.output) / "model.safetensors").exists()


def test_rerun_with_other_settings_is_refused(single):
    config, _ = single
    changed = TrainConfig(**{**config.__dict__, "lr": 1e-4})
    with pytest.raises(InputError, match="started with other lr"):
        run(changed)


def _no_training(*args, **kwargs):
    raise AssertionError("training started: the changed run should have been refused")


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_workers", 1),
        ("gather_across_devices", False),
        ("use_gpu", True),
        ("batch_size", 32),
        ("max_seq_length", 64),
    ],
)
def test_resume_with_other_workers_gather_gpu_batch_or_length_is_refused(
    gathered_resumed, monkeypatch, key, value
):
    config, _ = gathered_resumed  # 2 workers, gathering, CPU, batch 16, 32 tokens
    monkeypatch.setattr(job, "_trainer", _no_training)
    changed = TrainConfig(**{**config.__dict__, key: value})
    with pytest.raises(InputError, match=rf"started with other [a-z_, ]*\b{key}\b"):
        run(changed)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(ungathered):
    metrics, stopped = ungathered
    error = stopped["error"]
    # A clear error (the CLI's exit 1, not a bad-input 2) that names the step and the loss.
    assert isinstance(error, RuntimeError) and not isinstance(error, UserError), error
    assert "step 3" in str(error) and "nan" in str(error) and "checkpoint" in str(error)
    assert not stopped["published"]  # nothing was published to OUTPUT
    assert stopped["checkpoint_steps"] == [2]  # none reported after the NaN step
    # Both ranks stopped together (rank 1's own loss was finite), and the re-run resumed from
    # the step-2 checkpoint: steps 1-2 from it, 3-4 trained again, every loss finite.
    assert [a["start_step"] for a in metrics["attempts"]] == [0, 2]
    assert np.isfinite(losses(metrics, STEPS_PER_EPOCH)).all()


def _tree(path: Path) -> dict[str, bytes]:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): p.read_bytes() for p in files}


def test_a_run_worse_than_the_base_is_exit_3_and_leaves_output_untouched(
    cluster, workdir, triplets_file, minilm_no_dropout, capsys
):
    """lr 1e-2 wrecks MiniLM within an epoch: the gate refuses it, the earlier model at OUTPUT
    stays byte for byte, and the refused model is kept beside OUTPUT, not in it."""
    from fashion_batch.cli import main

    output = _model_dir(workdir / "gated", "earlier model")
    before = _tree(output)
    argv = ["train", "--triplets", triplets_file, "--output", str(output)]
    argv += ["--base-model", minilm_no_dropout, "--num-workers", "1", "--epochs", "1"]
    argv += ["--lr", "1e-2", "--max-seq-length", "32", "--storage-path"]
    argv += [str(workdir / "ray_results"), "--name", "gated"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "quality gate" in err and "refused" in err and "NDCG@10" in err
    assert _tree(output) == before
    rejected = workdir / "gated.rejected-gated"
    assert str(rejected) in err
    metrics = json.loads((rejected / METRICS_FILE).read_text())
    gate = metrics["gate"]
    assert gate["passed"] is False and gate["fine_tuned"] < gate["base"]
    assert f"{gate['base']:.4f}" in err and f"{gate['fine_tuned']:.4f}" in err
    assert (rejected / "model.safetensors").exists()
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("gated")) == [
        "gated",
        "gated.rejected-gated",
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (Ray would wait for a GPU)")
def test_one_gpu_worker_trains_in_fp16(cluster, workdir, triplets_file, minilm_dir):
    metrics = run(
        tiny_config(workdir, triplets_file, minilm_dir, "gpu", num_workers=1, use_gpu=True)
    )
    assert metrics["precision"] == "fp16"
    loss = np.array([entry["loss"] for entry in metrics["loss"]])
    assert np.isfinite(loss).all()
    assert loss[-STEPS_PER_EPOCH:].mean() < loss[:STEPS_PER_EPOCH].mean()
