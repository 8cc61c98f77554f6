"""A nightly at catalog scale: a full run, then tonight's run with `--previous` (not a test).

    .venv/bin/python benchmarks/nightly_scale.py --listings 1000000

Night 1 embeds the whole catalog (short listings, benchmarks/catalogs.py) with a tiny
random-weight DistilBERT + the seed head (the model's speed is not what this measures: the
driver's planning and the carry-over are). Night 2 is the same catalog rewritten as a nightly
export would be, with 0.1% of listings changed, 0.1% removed and 0.1% new, embedded against
night 1 with `--previous`. For each night: wall time, peak RSS of the driver process alone and of
the whole process tree (Ray included), and the manifest's counts. What the driver holds is the
question (issue: nothing O(catalog) beyond the id -> hash index), so the driver's own peak is
reported separately.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import catalogs  # noqa: E402
from common import machine, timed  # noqa: E402
from embed_throughput import tiny_model  # noqa: E402

FILES = 20


def tonight(night1: Path, night2: Path, share: float, seed: int = 1) -> dict[str, int]:
    """Night 1's catalog with `share` of rows changed, `share` removed and `share` new."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    table = ds.dataset(str(night1)).to_table()
    n = len(table)
    k = max(1, int(n * share))
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, 2 * k, replace=False)
    changed, removed = picked[:k], picked[k:]
    description = table.column("description").to_pylist()
    for i in changed:
        description[i] += " Price dropped tonight."
    table = table.set_column(2, "description", pa.array(description))
    keep = np.ones(n, dtype=bool)
    keep[removed] = False
    table = table.filter(pa.array(keep))
    new = pa.table(catalogs.rows("short", k, seed=seed + 1))
    top = pc.max(table.column("listing_id")).as_py()
    new = new.set_column(0, "listing_id", pa.array(range(top + 1, top + 1 + k), pa.int64()))
    table = pa.concat_tables([table, new.cast(table.schema)])
    night2.mkdir(parents=True, exist_ok=True)
    step = -(-len(table) // FILES)
    for i in range(FILES):
        pq.write_table(table.slice(i * step, step), night2 / f"listings-{i:03d}.parquet")
    return {"changed": k, "removed": k, "new": k}


def embed(catalog: Path, out: Path, model: str, log: Path, previous: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "fashion_batch", "embed", "--input", str(catalog)]
    cmd += ["--output", str(out), "--model", model, "--overwrite"]
    if previous is not None:
        cmd += ["--previous", str(previous)]
    res = timed(cmd, log)
    manifest = json.loads((out / "manifest.json").read_text())
    keys = ("rows_in", "rows_out", "rows_quarantined", "stage_seconds", "incremental")
    return {**res, **{k: manifest.get(k) for k in keys}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--listings", type=int, default=1_000_000)
    p.add_argument("--share", type=float, default=0.001, help="changed = removed = new share")
    p.add_argument("--workdir", help="default: a new temp dir")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fb-nightly-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = tiny_model(workdir)
    night1 = Path(catalogs.write("short", args.listings, workdir / "night1", files=FILES))
    night2 = workdir / "night2"
    shutil.rmtree(night2, ignore_errors=True)
    delta = tonight(night1, night2, args.share)
    out1, out2 = workdir / "out1", workdir / "out2"
    first = embed(night1, out1, model, workdir / "night1.log")
    second = embed(night2, out2, model, workdir / "night2.log", previous=out1)
    result = {"machine": machine(), "listings": args.listings, "delta": delta}
    result |= {"night1": first, "night2": second}
    lines = [
        f"machine: {result['machine']}",
        f"{args.listings} listings, {FILES} files; tonight: {delta}; model: tiny DistilBERT + "
        "seed head",
        "",
        "| run | seconds | driver peak RSS MiB | tree peak RSS MiB | rows in | rows out "
        "| carried |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in (("night 1 (full)", first), ("night 2 (--previous)", second)):
        carried = (r.get("incremental") or {}).get("unchanged", "")
        lines.append(
            f"| {name} | {r['seconds']:.0f} | {r['peak_root_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r['rows_in']} | {r['rows_out']} | {carried} |"
        )
    print("\n".join(lines))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
