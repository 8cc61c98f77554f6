"""The training record without Ray: the sentence-transformers model card filled from the
loop's record, the TensorBoard log, the loss plot, and the progress line."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from fashion_batch.evaluate.retrieval import from_triplets
from fashion_batch.train.card import save_final, training_metrics
from fashion_batch.train.checkpoint import initial_state
from fashion_batch.train.config import TrainConfig
from fashion_batch.train.record import StepLog
from tests.train.record_checks import check_record, section
from tests.train.test_batches import product_triplets


def _scores(ndcg: float, similarity: str) -> dict:
    return {
        "ndcg@10": ndcg,
        "mrr@10": ndcg + 0.05,
        "recall@10": ndcg - 0.1,
        "recall@100": 0.9,
        "map@100": ndcg - 0.05,
        "cosine_ndcg@10": ndcg,
        "dot_ndcg@10": ndcg,
        "similarity": similarity,
        "queries": 6,
        "corpus": 12,
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory, minilm_dir):
    """A finished run's model dir, written by `save_final` from a record as the loop keeps it:
    2 epochs of 3 steps, the loss logged every 2 steps and at the last, epoch 1 published."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim

    from fashion_batch.train.model import build_model

    root = tmp_path_factory.mktemp("record")
    rows = product_triplets(products=8, variants=2)
    held = {c: v[:4] for c, v in rows.items()}
    train = {c: v[4:] for c, v in rows.items()}
    settings = TrainConfig(
        triplets="t.parquet",
        output=str(root / "out"),
        base_model=minilm_dir,
        num_workers=2,
        epochs=2,
        max_seq_length=32,
        logging_steps=2,
    )
    config = {
        **asdict(settings),
        "gather_across_devices": True,
        "train": train,
        "eval": held,
        "retrieval": from_triplets(held["anchor"], held["positive"], held["negative"]),
    }
    model = build_model(minilm_dir, config)
    loss = MultipleNegativesRankingLoss(
        model, scale=20.0, similarity_fct=cos_sim, gather_across_devices=True
    )
    state = initial_state()
    state["loss"] = [
        {"step": s, "epoch": round(s / 3, 4), "loss": 2.0 / s, "lr": 5e-5 * (1 - s / 6)}
        for s in (1, 2, 4, 6)
    ]
    state["eval_base"] = _scores(0.41, "cosine")
    state["eval_before"] = _scores(0.41, "dot")
    state["eval_epochs"] = [
        {"epoch": 1, "step": 3, **_scores(0.5234567, "dot")},
        {"epoch": 2, "step": 6, **_scores(0.48, "dot")},
    ]
    state["batches"] = [
        {"epoch": e, "batches": 3, "deferred_same_text": 0, "deferred_same_product": 4}
        for e in (1, 2)
    ]
    metrics = training_metrics(
        config,
        state,
        world=2,
        steps_per_epoch=3,
        steps=6,
        gather=True,
        precision="fp32",
        train_s=1.0,
    )
    metrics["published_epoch"] = 1
    metrics["eval_after"] = {
        k: v for k, v in state["eval_epochs"][0].items() if k not in ("epoch", "step")
    }
    save_final(model, loss, metrics, str(root / "model"), config)
    return root / "model", metrics, config


def test_card_tensorboard_and_plot_say_what_the_metrics_say(finished):
    model_dir, metrics, config = finished
    check_record(model_dir, metrics, config)


def test_card_names_the_base_and_the_published_step(finished, minilm_dir):
    model_dir, metrics, _ = finished
    card = (model_dir / "README.md").read_text()
    assert f"fashion-batch fine-tune of {minilm_dir}" in card
    # A local base has no Hub id: no made-up link.
    assert "https://huggingface.co/" + minilm_dir not in card
    # The published epoch's row of the training log is bold (the saved checkpoint).
    rows = [line for line in section(card, "### Training Logs").splitlines() if "|" in line]
    bold = [line for line in rows if "**" in line]
    assert len(bold) == 1 and "**3**" in bold[0]
    # Settings off the seed recipe are listed apart.
    non_default = card.split("#### Non-Default Hyperparameters")[1].split("####")[0]
    assert "- `epochs`: 2" in non_default and "- `lr`" not in non_default
    assert metrics["batching"] == {
        "products": 6,  # the first 2 products' 4 triplets are held out
        "triplets_sharing_a_product": 12,
        "epochs": [
            {"epoch": e, "batches": 3, "deferred_same_text": 0, "deferred_same_product": 4}
            for e in (1, 2)
        ],
    }
    assert "6 products, 12 triplets share" in card.replace("\n", " ").replace("  ", " ")


def test_published_dir_still_loads_as_a_sentence_transformer(finished):
    from sentence_transformers import SentenceTransformer

    model_dir, _, _ = finished
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.encode(["red wool coat"]).shape == (1, 768)
    assert (model_dir / "runs").is_dir() and (model_dir / "training_loss.png").is_file()


def test_progress_line_has_step_loss_lr_rate_and_eta():
    now = [100.0]
    log = StepLog(total_steps=100, global_batch=16, start_step=20, clock=lambda: now[0])
    now[0] = 110.0  # 10 steps in 10 s: 16 samples/s, 1 s a step, 70 steps left
    line = log.line({"step": 30, "loss": 1.23456, "lr": 4e-5})
    assert line == "step 30/100  loss 1.2346  lr 4e-05  16.0 samples/s  ETA 0:01:10"
    now[0] = 112.0  # 2 steps in 2 s since the last line
    assert log.line({"step": 32, "loss": 1.0, "lr": 3.9e-5}).endswith("16.0 samples/s  ETA 0:01:08")
