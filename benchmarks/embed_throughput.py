"""Side by side: `fashion-batch embed` against what a user would write by hand (not a test).

    .venv/bin/python benchmarks/embed_throughput.py --listings 4000 --repeats 2

Variants, each run as its own child process, alternated `--repeats` times, over the same Parquet
catalog and the same model (builtin:minilm unless --model):

    plain      read each Parquet file → SentenceTransformer.encode(batch_size=64) → write Parquet
    st-pool    the same, through sentence-transformers' multi-process pool, one CPU process/core
    embed      `fashion-batch embed` with its defaults
    embed-fast `fashion-batch embed` + --fast-flags (default: --backend onnx-int8)

Rows/s = catalog rows / wall time of the whole child process: imports, model load, Ray start-up
and the Parquet writes are all inside, as a user would see them. Peak memory = the maximum over
the run of the summed RSS of the child and all its descendants (Ray's GCS, raylet, workers and
actors included), sampled every 0.25 s with psutil. Summed RSS counts pages shared between
processes (Ray's object store in /dev/shm, shared libraries) once per process, so it is an upper
bound; `--memory` mode also reports the summed PSS (PeakRSS says why). The ONNX export is
built once before timing (`encoders.export.prepare`, cached by model digest; a one-time cost per
model and node, printed separately).

`--memory` mode: peak PSS and RSS of `fashion-batch embed` at several catalog sizes (default 20k and
200k), to show the job streams (memory flat as the catalog grows). With `--memory-model tiny` it
uses a tiny random-weight DistilBERT + the seed head (built here), so 200k rows take minutes rather
than the much longer MiniLM would: the pipeline's memory, not the model's, is what scales.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/common.py, also when imported from elsewhere

from common import ENV, cosine_to, count_rows, machine, read_output, timed  # noqa: E402

VARIANTS = ("plain", "st-pool", "embed", "embed-fast")


# ----------------------------------------------------------------------- the by-hand baselines


def _texts_and_ids(path: str):
    """One Parquet file → (table of ids, texts), rendered and cleaned exactly as the job does, so
    both sides embed the same strings; empty texts and null ids are skipped."""
    import pyarrow.parquet as pq

    from fashion_batch.text import Template

    template = Template("{title}. {description}")
    t = pq.read_table(path, columns=["listing_id", *template.columns])
    texts = template.render_columns(t.select(template.columns).to_pydict(), len(t))
    ids = t.column("listing_id").to_pylist()
    keep = [i for i, (x, s) in enumerate(zip(ids, texts, strict=True)) if x is not None and s]
    return [ids[i] for i in keep], [texts[i] for i in keep]


def _write(ids, vectors, path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    v = np.ascontiguousarray(vectors, dtype=np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
    pq.write_table(pa.table({"listing_id": pa.array(ids, pa.int64()), "embedding": emb}), path)


def by_hand(catalog: str, output: str, model: str, pool: bool) -> None:
    """The loop a user writes: per file read → encode → write (optionally with ST's pool)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from fashion_batch.encoders.models import resolve_model

    cuda = torch.cuda.is_available()
    st = SentenceTransformer(resolve_model(model), device="cuda" if cuda else "cpu")
    if cuda:
        st.half()  # what a user on a GPU does (and what the job's `auto` precision does)
    devices = None if cuda else ["cpu"] * (os.cpu_count() or 1)  # None: every GPU
    workers = st.start_multi_process_pool(devices) if pool else None
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted(Path(catalog).glob("*.parquet"))):
        ids, texts = _texts_and_ids(str(path))
        vectors = st.encode(texts, batch_size=64, pool=workers, show_progress_bar=False)
        _write(ids, vectors, out / f"part-{i:05d}.parquet")
    if workers is not None:
        st.stop_multi_process_pool(workers)


# ---------------------------------------------------------------------------- measuring


def command(variant: str, catalog: str, output: Path, model: str, fast_flags: str) -> list[str]:
    py = sys.executable
    if variant in ("plain", "st-pool"):
        flag = ["--pool"] if variant == "st-pool" else []
        return [py, str(Path(__file__).resolve()), "_by_hand", catalog, str(output), model, *flag]
    cmd = [py, "-m", "fashion_batch", "embed", "--input", catalog, "--output", str(output)]
    cmd += ["--model", model, "--overwrite"]
    return cmd + (shlex.split(fast_flags) if variant == "embed-fast" else [])


def make_catalog(listings: int, workdir: Path, seed: int = 0) -> str:
    from fashion_batch.sample_data import SampleDataConfig
    from fashion_batch.sample_data import run as sample_run

    out = workdir / f"sample-{listings}"
    if not (out / "catalog").exists():
        sample_run(SampleDataConfig(output=str(out), listings=listings, seed=seed))
    return str(out / "catalog")


def warm_backend(model: str, fast_flags: str) -> float | None:
    """Build the ONNX export (if the fast flags ask for one) outside the timed runs."""
    flags = shlex.split(fast_flags)
    if "--backend" not in flags:
        return None
    backend = flags[flags.index("--backend") + 1]
    code = (
        "from fashion_batch.encoders.export import prepare; "
        "from fashion_batch.encoders.models import resolve_model; "
        f"prepare(resolve_model({model!r}), {backend!r})"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | ENV)
    return time.perf_counter() - t0


def throughput(args) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    catalog = args.catalog or make_catalog(args.listings, workdir)
    rows = count_rows(catalog)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    export_s = warm_backend(args.model, args.fast_flags) if "embed-fast" in variants else None
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:  # alternate the order
            out = workdir / f"out-{v}"
            shutil.rmtree(out, ignore_errors=True)
            res = timed(command(v, catalog, out, args.model, args.fast_flags), workdir / f"{v}.log")
            res["rows_per_s"] = rows / res["seconds"]
            runs[v].append(res)
            print(
                f"  {v:<11} run {r + 1}: {res['rows_per_s']:7.1f} rows/s, "
                f"{res['seconds']:.0f} s, peak RSS {res['peak_rss_mb']:.0f} MiB",
                file=sys.stderr,
            )
    outputs = {v: read_output(workdir / f"out-{v}") for v in variants}
    base = "plain" if "plain" in variants else variants[0]
    best = {v: max(runs[v], key=lambda x: x["rows_per_s"]) for v in variants}
    result = {
        "machine": machine(),
        "catalog": catalog,
        "rows": rows,
        "model": args.model,
        "repeats": args.repeats,
        "fast_flags": args.fast_flags,
        "onnx_export_seconds_once": export_s,
        "baseline": base,
        "variants": {
            v: {
                "rows_per_s_best": best[v]["rows_per_s"],
                "rows_per_s_all": [x["rows_per_s"] for x in runs[v]],
                "ratio_to_baseline": best[v]["rows_per_s"] / best[base]["rows_per_s"],
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs[v]),
                "rows_written": len(outputs[v]),
                "cosine_to_baseline": cosine_to(outputs[base], outputs[v]),
                "command": shlex.join(
                    command(v, catalog, Path("OUT"), args.model, args.fast_flags)
                ),
            }
            for v in variants
        },
    }
    print(table(result))
    return result


def table(result: dict) -> str:
    lines = [
        f"machine: {result['machine']}",
        f"catalog: {result['rows']} listings ({result['catalog']}); model {result['model']}; "
        f"best of {result['repeats']}; fast flags: {result['fast_flags']}",
        "",
        f"| variant    | rows/s | × {result['baseline']} | peak RSS (MiB, tree) "
        "| cosine to plain (min / mean) |",
        "|------------|-------:|--------:|---------------------:|-----------------------------|",
    ]
    for v, r in result["variants"].items():
        c = r["cosine_to_baseline"]
        lines.append(
            f"| {v:<10} | {r['rows_per_s_best']:6.1f} | {r['ratio_to_baseline']:6.2f}× "
            f"| {r['peak_rss_mb']:20.0f} | {c['min']:.4f} / {c['mean']:.4f}"
            f" ({c['rows']} rows) |"
        )
    export = result.get("onnx_export_seconds_once")
    if export is not None:
        lines.append(f"(one-time ONNX export + quantization, then cached: {export:.0f} s)")
    return "\n".join(lines)


def tiny_model(workdir: Path) -> str:
    """A tiny random DistilBERT + mean pooling + the seed's Dense head (768-d), MiniLM tokenizer."""
    from fashion_batch.encoders.models import build_seed_model, random_distilbert, resolve_model

    out = workdir / "tiny-seed"
    if (out / "modules.json").exists():
        return str(out)
    base = random_distilbert(
        workdir / "tiny-distilbert",
        resolve_model("builtin:minilm"),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        seed=0,
    )
    build_seed_model(base).save(str(out), safe_serialization=True)
    return str(out)


def memory(args) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = tiny_model(workdir) if args.memory_model == "tiny" else args.memory_model
    sizes = [int(s) for s in args.sizes.split(",")]
    flags = shlex.split(args.memory_flags)
    rows = []
    for n in sizes:
        catalog = make_catalog(n, workdir)
        out = workdir / f"mem-out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "fashion_batch", "embed", "--input", catalog]
        cmd += ["--output", str(out), "--model", model, "--overwrite", *flags]
        res = timed(cmd, workdir / f"mem-{n}.log", pss=True)
        manifest = json.loads((out / "manifest.json").read_text())
        rows.append({"listings": n, **res, "rows_out": manifest["rows_out"]})
        print(
            f"  {n} listings: peak RSS {res['peak_rss_mb']:.0f} MiB, PSS {res['peak_pss_mb']:.0f}",
            file=sys.stderr,
        )
    label = (
        "tiny random DistilBERT(dim 32, 2 layers)+Dense(768)"
        if args.memory_model == "tiny"
        else model
    )
    result = {"machine": machine(), "model": label, "flags": args.memory_flags, "runs": rows}
    lines = [
        f"machine: {result['machine']}",
        f"model: {label}; flags: {args.memory_flags or '(defaults)'}",
        "",
        "| listings | rows out | seconds | peak PSS (MiB, tree) | peak RSS (MiB, tree) "
        "| processes |",
        "|---------:|---------:|--------:|---------------------:|---------------------:"
        "|----------:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['listings']:>8} | {r['rows_out']:>8} | {r['seconds']:7.0f} "
            f"| {r['peak_pss_mb']:20.0f} | {r['peak_rss_mb']:20.0f} "
            f"| {r['processes_at_peak']:>9} |"
        )
    print("\n".join(lines))
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_by_hand":  # child process of the plain / st-pool variants
        by_hand(argv[1], argv[2], argv[3], pool="--pool" in argv[4:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--listings", type=int, default=2000, help="generated catalog size")
    p.add_argument("--catalog", help="use this Parquet catalog dir instead of generating one")
    p.add_argument("--model", default="builtin:minilm")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--fast-flags", default="--backend onnx-int8")
    p.add_argument("--workdir", help="where catalogs and outputs go (default: a new temp dir)")
    p.add_argument("--json-out", help="also write the results as JSON here")
    p.add_argument("--memory", action="store_true", help="peak-RSS-vs-catalog-size mode")
    p.add_argument("--sizes", default="20000,200000", help="--memory: catalog sizes")
    p.add_argument("--memory-model", default="tiny", help="--memory: 'tiny' or a --model value")
    p.add_argument("--memory-flags", default="", help="--memory: extra embed flags")
    args = p.parse_args(argv)
    result = memory(args) if args.memory else throughput(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
