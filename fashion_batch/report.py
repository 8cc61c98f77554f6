"""`fashion-batch report OUTPUT`: the manifest's cost and throughput ledger (embed/ledger.py) as a
plain-text table, or as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fashion_batch.embed.ledger import STAGES
from fashion_batch.errors import InputError
from fashion_batch.options import option


@dataclass
class ReportConfig:
    """Settings of `fashion-batch report`."""

    output: str = option(positional=True, help="a finished embed output (local or s3://)")
    json: bool = option(False, help="print the ledger as JSON")


def run(config: ReportConfig) -> dict:
    """The manifest of a finished output that has a ledger (exit 2 otherwise)."""
    from fashion_batch.evaluate.snapshots import open_snapshot

    manifest = open_snapshot(config.output, "OUTPUT").manifest
    if "ledger" not in manifest:
        raise InputError(f"OUTPUT {config.output}: its manifest has no ledger (an older run)")
    return manifest


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _pct(share) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def table(manifest: dict) -> str:
    """The ledger, one aligned line per figure."""
    ledger = manifest["ledger"]
    rows, actors, tokens = ledger["rows"], ledger["actors"], ledger["tokens"]
    memory, cost = ledger["peak_memory_mib"], ledger["cost"]
    lines = [
        ("rows embedded", _num(rows["embedded"])),
        ("rows carried", _num(rows["carried"]) + "  (unchanged since --previous)"),
        ("rows resumed", _num(rows["resumed"]) + "  (units an earlier attempt finished)"),
        ("rows quarantined", _num(rows["quarantined"])),
        ("wall", f"{_num(ledger['wall_s'])} s"),
    ]
    lines += [
        (
            f"{stage}",
            f"{_num(s['rows'])} rows in {_num(s['seconds'], 2)} s  "
            f"= {_num(s['rows_per_s'])} rows/s",
        )
        for stage, s in ((k, ledger["stages"][k]) for k in STAGES)
    ]
    share = actors["busy_share"]
    lines += [
        ("actors", f"{actors['count']} x {_num(actors['gpus_per_actor'], 2)} GPU"),
        (
            "actor-seconds",
            f"{_num(actors['actor_seconds'])} (busy encoding "
            f"{_num(actors['busy_encode_seconds'])}, {_pct(share)})",
        ),
        ("GPU-seconds", _num(actors["gpu_seconds"])),
        ("padding waste", f"{_pct(tokens['padding_waste'])} of {_num(tokens['padded'])} tokens"),
        (
            "peak memory",
            f"driver {_num(memory['driver'])} MiB, actor max {_num(memory['actor_max'])} MiB",
        ),
        ("node-hours", f"{_num(cost['node_hours'], 4)} ({cost['nodes']} node(s))"),
        (
            "estimated cost",
            "-"
            if cost["estimated_usd"] is None
            else f"${cost['estimated_usd']:.4f} at ${cost['price_per_hour']}/node-hour (list price "
            "assumed, check your region)",
        ),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def render(manifest: dict, as_json: bool) -> str:
    return json.dumps(manifest["ledger"], indent=2) if as_json else table(manifest)
