"""The cost and throughput ledger of an embed run (the manifest's `ledger`).

What an on-call engineer or a budget owner asks of a nightly run: how many rows were embedded and
how many carried over from last night, how fast each stage went, how long the actors and their
GPUs were held and how much of that they spent encoding, how much of the model's work was padding,
the peak memory, and what the run cost.

Each unit collects its own measurements as it moves through the stages: PrepareUnits times the
read and the text preparation, EmbedUnits the encoding (and counts rows, tokens and the actor's
peak memory), WriteUnits the write. They travel beside the unit as one JSON column (`LEDGER`) and
end in the writer's statistics row, not in the unit's commit record (which must hold the same bytes
on every run). A resumed run's earlier units have no measurements: the stage rates cover the
units this invocation did.

Cost is an estimate: wall-clock hours x Ray nodes x `--price-per-hour`, i.e. every node is billed
for the whole run at one price (give the price of the node type that dominates; cluster.yaml names
the assumed on-demand list prices of its node types). A head node that only schedules, or
autoscaled nodes that joined late, make it an over-estimate.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager

import pyarrow as pa

LEDGER = "__ledger"  # packed-unit column: the unit's measurements so far, JSON
STAGES = ("read", "prepare", "encode", "write")


def notes(units: pa.Table) -> list[dict]:
    """The measurements each packed unit carries so far ({} where none)."""
    if LEDGER not in units.column_names:
        return [{} for _ in range(len(units))]
    return [json.loads(v) if v else {} for v in units.column(LEDGER).to_pylist()]


def attach(units: pa.Table, unit_notes: list[dict]) -> pa.Table:
    """`units` with each unit's measurements in the LEDGER column (replacing an older one)."""
    if LEDGER in units.column_names:
        units = units.drop_columns([LEDGER])
    return units.append_column(LEDGER, pa.array([json.dumps(n) for n in unit_notes], pa.string()))


def peak_rss_mib() -> float:
    """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


@contextmanager
def encoding(embed, note: dict):
    """Record into `note` what one unit's encoding took: seconds, rows encoded, tokens (when
    the encoder counts them: encoders/tokens.py) and the actor's peak memory."""
    tokens = getattr(embed.encoder, "token_count", None)
    real0, padded0 = tokens.snapshot() if tokens is not None else (0, 0)
    rows0 = embed.rows_encoded
    t0 = time.perf_counter()
    yield
    note["encode_s"] = time.perf_counter() - t0
    note["encoded"] = embed.rows_encoded - rows0
    if tokens is not None:
        real, padded = tokens.snapshot()
        note["tokens"], note["padded_tokens"] = real - real0, padded - padded0
    note["actor_rss_mib"] = peak_rss_mib()


def _sum(notes_: list[dict], key: str) -> float:
    return sum(n.get(key, 0) for n in notes_)


def build(stats: list[dict], wall_s: float, embed_s: float, actors, nodes: int, price) -> dict:
    """The ledger from the writers' statistics rows.

    Args:
        stats: one row per unit (resumed units included; they carry no measurements).
        wall_s: the run's wall-clock seconds; embed_s: the part of it the pipeline ran.
        actors: the pool (embed/actors.PoolSize) or None when nothing was embedded.
        nodes: Ray nodes alive at the end of the run.
        price: --price-per-hour (USD per node-hour) or None.
    """
    measured = [(s, json.loads(s["ledger"])) for s in stats if s.get("ledger")]
    notes_ = [n for _, n in measured]
    carried = sum(s.get("d_unchanged", 0) for s in stats)
    rows = {
        "embedded": int(_sum(notes_, "encoded")),
        "carried": carried,
        "resumed": sum(s["rows_out"] for s in stats if not s.get("ledger")),
        "quarantined": sum(s["rows_quarantined"] for s in stats),
    }
    unit_rows = sum(s["rows_out"] + s["rows_quarantined"] for s, _ in measured)
    stage_rows = {"read": unit_rows, "prepare": unit_rows, "encode": rows["embedded"]}
    stage_rows["write"] = unit_rows
    stages = {}
    for stage in STAGES:
        seconds = _sum(notes_, f"{stage}_s")
        n = stage_rows[stage]
        rate = round(n / seconds, 2) if seconds > 0 and n else None
        stages[stage] = {"seconds": round(seconds, 3), "rows": n, "rows_per_s": rate}
    count = len({s.get("embed_actor") for s, _ in measured if s.get("embed_actor")})
    gpus = actors.gpus if actors is not None else 0
    actor_s = count * embed_s
    busy = _sum(notes_, "encode_s")
    real, padded = int(_sum(notes_, "tokens")), int(_sum(notes_, "padded_tokens"))
    actor_rss = [n["actor_rss_mib"] for n in notes_ if "actor_rss_mib" in n]
    hours = wall_s / 3600
    return {
        "rows": rows,
        "wall_s": round(wall_s, 3),
        "stages": stages,
        "actors": {
            "count": count,
            "gpus_per_actor": gpus,
            "actor_seconds": round(actor_s, 3),
            "busy_encode_seconds": round(busy, 3),
            "busy_share": round(busy / actor_s, 4) if actor_s > 0 else None,
            "gpu_seconds": round(actor_s * gpus, 3),
        },
        "tokens": {
            "real": real,
            "padded": padded,
            "padding_waste": round((padded - real) / padded, 4) if padded else None,
        },
        "peak_memory_mib": {
            "driver": round(peak_rss_mib(), 1),
            "actor_max": round(max(actor_rss), 1) if actor_rss else None,
        },
        "cost": {
            "nodes": nodes,
            "price_per_hour": price,
            "node_hours": round(hours * nodes, 6),
            "estimated_usd": round(hours * nodes * price, 6) if price is not None else None,
            "basis": "wall-clock hours x nodes x --price-per-hour",
        },
    }
