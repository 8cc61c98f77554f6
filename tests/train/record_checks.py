"""Reading back what a train run leaves beside its model: the model card's tables, the
TensorBoard event file, the loss plot. Shared by test_record.py (no Ray) and test_train.py."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from fashion_batch.train.card import NDCG_COLUMN, hyperparameters
from fashion_batch.train.record import EVAL_METRICS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def section(card: str, heading: str) -> str:
    """The text under `heading` (a whole markdown heading line) up to the next heading of the
    same or a higher level."""
    level = heading.split(" ")[0]
    start = card.index(f"\n{heading}\n") + len(heading) + 2
    ends = [
        m.start() for m in re.finditer(r"\n(#+) ", card[start:]) if len(m.group(1)) <= len(level)
    ]
    return card[start : start + ends[0]] if ends else card[start:]


def table(text: str) -> list[dict[str, str]]:
    """The first markdown table in `text`, one dict per row, bold marks removed."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in lines]
    header, rows = cells[0], cells[2:]
    return [dict(zip(header, row, strict=True)) for row in rows]


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from every TensorBoard event file under `run_dir`, read as TFRecords
    (u64 length, u32 crc, the Event proto, u32 crc)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {run_dir}"
    for path in files:
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def check_record(model_dir: Path, metrics: dict, config: dict) -> None:
    """The card, the event file and the plot in `model_dir` say what `metrics` says."""
    card = (model_dir / "README.md").read_text()
    # The training set: its size, columns, the loss and its parameters.
    train = section(card, "### Training Dataset")
    assert f"* Size: {metrics['train_triplets']:,} training samples" in train
    assert "<code>anchor</code>, <code>positive</code>, and <code>negative</code>" in train
    assert "MultipleNegativesRankingLoss" in train and '"scale": 20.0' in train
    assert '"similarity_fct": "cos_sim"' in train
    gather = str(metrics["gather_across_devices"]).lower()
    assert f'"gather_across_devices": {gather}' in train
    # Every hyper-parameter, with its value.
    every = section(card, "#### All Hyperparameters")
    for key, value in hyperparameters(metrics, config).items():
        assert f"- `{key}`: {value}\n" in every, key
    # The training log: every logged loss at its step, NDCG@10 at step 0 and each epoch's end.
    logs = {int(row["Step"]): row for row in table(section(card, "### Training Logs"))}
    for entry in metrics["loss"]:
        assert float(logs[entry["step"]]["Training Loss"]) == pytest.approx(entry["loss"], abs=1e-4)
    assert float(logs[0][NDCG_COLUMN]) == pytest.approx(metrics["eval_before"]["ndcg@10"], abs=1e-4)
    for entry in metrics["eval_epochs"]:
        assert float(logs[entry["step"]][NDCG_COLUMN]) == pytest.approx(entry["ndcg@10"], abs=1e-4)
    # The evaluation: base, step 0 and the published epoch side by side.
    scores = {row["Metric"]: row for row in table(section(card, "## Evaluation"))}
    for column, key in (
        ("base", "eval_base"),
        ("step_0", "eval_before"),
        ("fine_tuned", "eval_after"),
    ):
        for m in EVAL_METRICS:
            assert float(scores[m][column]) == pytest.approx(metrics[key][m], abs=1e-4), (m, column)
    assert "## Fine-tuning (fashion-batch train)" in card
    # TensorBoard: the same losses, the same held-out NDCG@10.
    scalars = read_scalars(model_dir / "runs")
    assert [s for s, _ in scalars["train/loss"]] == [e["step"] for e in metrics["loss"]]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(
        [e["loss"] for e in metrics["loss"]]
    )
    ndcg = dict(scalars["eval/ndcg_at_10"])
    assert dict(scalars["eval_base/ndcg_at_10"])[0] == pytest.approx(
        metrics["eval_base"]["ndcg@10"]
    )
    assert ndcg[0] == pytest.approx(metrics["eval_before"]["ndcg@10"])
    for entry in metrics["eval_epochs"]:
        assert ndcg[entry["step"]] == pytest.approx(entry["ndcg@10"])
    # The plot: a PNG.
    png = (model_dir / "training_loss.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and b"IEND" in png[-12:]
