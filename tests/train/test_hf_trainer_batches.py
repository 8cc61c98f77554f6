"""Why the trainer gets our global batch sampler with `split_batches`, checked against the installed
sentence-transformers / transformers / accelerate: what each of 2 ranks would get from
`SentenceTransformerTrainer`'s train dataloader, sharded by accelerate's `prepare_data_loader` as
`Accelerator.prepare` does it on 2 processes (the process count passed in, no process group).

* With the trainer's defaults (per-device batch 8, NO_DUPLICATES) the sampler draws batches of
  8 and accelerate deals them round-robin: rank 0 gets batch 0, rank 1 batch 1. The gathered
  batch of 16 that MNRL scores is then two independent NO_DUPLICATES batches, which repeat texts
  between them (an anchor's own query text among its negatives' anchors, and so its positives
  as false negatives), and it is not the batch a 1×16 run trains on.
* With `accelerator_config={"split_batches": True}` and per-device batch 16 (then the GLOBAL
  batch), the sampler draws batches of 16 and each rank gets a contiguous half: exactly
  `data.shard` of our own global batches. So the workers run the trainer with `split_batches`
  and the global batch size, drawing from our sampler (train/trainer.py).
"""

from __future__ import annotations

import pytest

from fashion_batch.train.data import global_batch_sampler, shard

WORLD = 2


def repeated_queries() -> dict[str, list[str]]:
    """24 queries with 4 listings each: repeated anchors, as logged search data has."""
    rows = {"anchor": [], "positive": [], "negative": []}
    for q in range(24):
        for j in range(4):
            rows["anchor"].append(f"query {q}")
            rows["positive"].append(f"listing {q}-{j}")
            rows["negative"].append(f"other listing {q}-{j}")
    return rows


def rank_batches(model, rows, output_dir, per_device: int, split_batches: bool) -> list[list]:
    """Each rank's batches (row indices) for epoch 0, as the trainer would feed them."""
    from accelerate.data_loader import prepare_data_loader
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        dataloader_drop_last=True,  # all_gather needs equal shapes
        seed=42,
        use_cpu=True,
        report_to="none",
        accelerator_config={"split_batches": split_batches},
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(rows),
        loss=MultipleNegativesRankingLoss(model, gather_across_devices=True),
    )
    loader = trainer.get_train_dataloader()
    assert trainer.accelerator.split_batches is split_batches
    return [
        list(
            prepare_data_loader(
                loader,
                num_processes=WORLD,
                process_index=rank,
                split_batches=split_batches,
                put_on_device=False,
                even_batches=False,
            ).batch_sampler
        )
        for rank in range(WORLD)
    ]


@pytest.fixture(scope="module")
def model(minilm_dir):
    """A model of its own: the trainer writes into its model card data."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_dir, device="cpu")


@pytest.fixture(scope="module")
def ours():
    rows = repeated_queries()
    sampler = global_batch_sampler(rows, batch_size=16, seed=42)
    sampler.set_epoch(0)
    return rows, list(sampler)


def test_default_trainer_batches_differ_from_the_global_batch_and_repeat_texts(
    model, tmp_path, ours
):
    rows, global_batches = ours
    ranks = rank_batches(model, rows, tmp_path, per_device=8, split_batches=False)
    steps = min(len(ranks[0]), len(ranks[1]))
    assert steps >= 1
    gathered = [ranks[0][s] + ranks[1][s] for s in range(steps)]  # MNRL's all_gather order
    # Each rank's own 8 rows hold no repeated text (NO_DUPLICATES per rank) ...
    for rank in ranks:
        assert all(len({rows["anchor"][i] for i in batch}) == 8 for batch in rank)
    # ... but the gathered 16 do, at some step: a query meets its own listings as negatives.
    assert any(len({rows["anchor"][i] for i in batch}) < 16 for batch in gathered)
    # And they are not what one process with a batch of 16 trains on.
    assert gathered != global_batches[:steps]
    assert any(
        ranks[r][s] != shard(global_batches[s], r, WORLD)
        for r in range(WORLD)
        for s in range(steps)
    )


def test_split_batches_trainer_deals_the_loops_global_batch_slices(model, tmp_path, ours):
    rows, global_batches = ours
    ranks = rank_batches(model, rows, tmp_path, per_device=16, split_batches=True)
    assert len(global_batches) >= 2
    for r in range(WORLD):
        assert ranks[r] == [shard(batch, r, WORLD) for batch in global_batches]
