"""What the nightly-operations features cost a nightly run (not a test).

    .venv/bin/python benchmarks/nightly_ops.py --listings 5000 [--sink]

Night 1 embeds a `sample-data` catalog (its queries.jsonl is the probe set: relevant ids are
needed, which only the generator that wrote the catalog knows) with builtin:minilm, the
defaults and the nightly's features (--probe-queries, and --sink lancedb://... with --sink), as
the first night of a nightly chain runs. Night 2 rewrites the catalog with 1% of listings
changed, removed and new (`tonight`) and runs twice, each a separate process, against night 1
with `--previous`:

    on   the same flags as night 1: gate with parity and probe, drift report, ledger, sink
    off  --parity-rows 0, no probe, no sink: no gate work; the drift report (written whenever
         --previous is given, with the sample it re-embeds) and the ledger are still there

So `on - off` is what the gate and the sink cost, and the drift report's own seconds after the
last unit are added to it for the features' cost. The table gives each night's wall time and,
from the manifest's timeline, the seconds spent after the last unit in the gate and in the drift
report, as a share of the run; and the sink's seconds from its manifest entry when one ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ENV, machine, timed  # noqa: E402

MODEL = "builtin:minilm"


def tonight(night1: Path, night2: Path, share: float, seed: int = 1) -> dict[str, int]:
    """Night 1's catalog (any columns) with `share` of rows changed (description edited),
    `share` removed, and `share` new (copies of other rows under new ids, titles edited)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    table = ds.dataset(str(night1)).to_table()
    n = len(table)
    k = max(1, int(n * share))
    picked = np.random.default_rng(seed).choice(n, 3 * k, replace=False)
    changed, removed, copied = picked[:k], picked[k : 2 * k], picked[2 * k :]
    column = table.schema.get_field_index("description")
    description = table.column(column).to_pylist()
    for i in changed:
        description[i] = (description[i] or "") + " Price dropped tonight."
    table = table.set_column(column, "description", pa.array(description, pa.string()))
    new = table.take(pa.array(copied))
    top = pc.max(table.column("listing_id")).as_py()
    ids = pa.array(range(top + 1, top + 1 + k), table.schema.field("listing_id").type)
    new = new.set_column(new.schema.get_field_index("listing_id"), "listing_id", ids)
    title = new.schema.get_field_index("title")
    titles = [f"{t or ''} (relisted)" for t in new.column(title).to_pylist()]
    new = new.set_column(title, "title", pa.array(titles, pa.string()))
    keep = np.ones(n, dtype=bool)
    keep[removed] = False
    table = pa.concat_tables([table.filter(pa.array(keep)), new])
    night2.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, night2 / "listings.parquet")
    return {"changed": k, "removed": k, "new": k}


def embed(catalog: Path, out: Path, log: Path, flags: list[str]) -> dict:
    cmd = [sys.executable, "-m", "fashion_batch", "embed", "--input", str(catalog)]
    cmd += ["--output", str(out), "--model", MODEL, "--overwrite", *flags]
    res = timed(cmd, log)
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest.get("timeline", {})
    embedded = t.get("embedded", t.get("total", 0))
    gate_done = t.get("gate_checked", embedded)
    res["gate_s"] = gate_done - embedded
    res["drift_s"] = t.get("drift_reported", gate_done) - gate_done
    sink = manifest.get("sink") or {}
    res["sink_s"] = sink.get("seconds")
    res["rows_out"] = manifest["rows_out"]
    res["probe"] = ((manifest.get("gate") or {}).get("probe") or {}).get("ndcg@10")
    return res


def _median(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def _seconds(runs: list[dict]) -> str:
    return ", ".join(f"{r['seconds']:.1f}" for r in runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--listings", type=int, default=5000)
    p.add_argument("--share", type=float, default=0.01, help="changed = removed = new share")
    p.add_argument("--sink", action="store_true", help="night 2 'on' also writes a LanceDB table")
    p.add_argument(
        "--repeat", type=int, default=1, help="night 2 runs on/off alternately this many times"
    )
    p.add_argument("--workdir", help="default: a new temp dir")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fb-ops-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sample = workdir / "sample"
    cmd = [sys.executable, "-m", "fashion_batch", "sample-data", "--output", str(sample)]
    subprocess.run([*cmd, "--listings", str(args.listings)], check=True, env=os.environ | ENV)
    night1, night2 = sample / "catalog", workdir / "night2"
    shutil.rmtree(night2, ignore_errors=True)
    delta = tonight(night1, night2, args.share)
    out1 = workdir / "out1"
    features = ["--probe-queries", str(sample / "queries.jsonl")]
    if args.sink:
        features += ["--sink", f"lancedb://{workdir / 'lance'}"]
    runs = {"night 1 (full, features on)": embed(night1, out1, workdir / "n1.log", features)}
    on = ["--previous", str(out1), *features]
    off = ["--previous", str(out1), "--parity-rows", "0"]
    tries: dict[str, list[dict]] = {"on": [], "off": []}
    for _ in range(args.repeat):  # alternating, so a slow minute of the machine hits both
        tries["on"].append(embed(night2, workdir / "out2-on", workdir / "on.log", on))
        tries["off"].append(embed(night2, workdir / "out2-off", workdir / "off.log", off))
    runs["night 2, features on"] = _median(tries["on"])
    runs["night 2, gate off"] = _median(tries["off"])
    lines = [
        f"machine: {machine()}",
        f"{args.listings} listings (sample-data), model {MODEL}; tonight: {delta}",
        f"night 2: median of {args.repeat} alternating on/off runs"
        + (
            f" (on: {_seconds(tries['on'])}; off: {_seconds(tries['off'])})"
            if args.repeat > 1
            else ""
        ),
        "",
        "| run | seconds | gate s | drift s | sink s | share after the last unit | probe NDCG@10 |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in runs.items():
        extra = r["gate_s"] + r["drift_s"] + (r["sink_s"] or 0)
        sink = f"{r['sink_s']:.1f}" if r["sink_s"] is not None else ""
        probe = f"{r['probe']:.3f}" if r["probe"] is not None else ""
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {r['gate_s']:.1f} | {r['drift_s']:.1f} | {sink} "
            f"| {100 * extra / r['seconds']:.0f}% | {probe} |"
        )
    on, off = runs["night 2, features on"], runs["night 2, gate off"]
    cost = on["seconds"] - off["seconds"] + off["drift_s"]
    lines += [
        "",
        f"night 2: the features cost {cost:.1f} s = {100 * cost / on['seconds']:.0f}% of the "
        "run (on - off + the drift report's seconds)",
    ]
    print("\n".join(lines))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"delta": delta, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
