"""Side by side: `fashion-batch embed` against what a user would write instead (not a test).

    .venv/bin/python benchmarks/embed_throughput.py --listings 8000 --shapes short,long,mixed \
        --models minilm,seed --repeats 1

For each catalog shape (benchmarks/catalogs.py: short, long, mixed; generated here from a
vocabulary of its own, hand-written listings first) and each model, every variant runs as its
own child process over the same Parquet catalog:

    plain, plain-per-file, plain-onnx, raydata, daft   the peers (benchmarks/peers.py)
    embed       `fashion-batch embed` with its defaults (on a small CPU machine, --runner auto
                picks the in-process runner: embed/local.py)
    embed-ray   `fashion-batch embed --runner ray`: the same job on a local Ray and its actors
    embed-fast  `fashion-batch embed` + --fast-flags (default: --backend onnx-int8)

Models: `minilm` (builtin:minilm, 384-d) and `seed` (the seed's size: a DistilBERT-base-shaped
encoder, 6 layers, hidden 768, random weights, the MiniLM tokenizer, mean pooling and
Dense(768 -> 768, no bias), built here), or any model dir.

Wall time is the whole child process (imports, model load, Ray start-up, Parquet writes), as a
user sees it; the ratio is against `plain` of the same shape and model in the same run (its
encode-only seconds are shown too, so fixed costs are visible). Cosine is each variant's vectors
against plain's, per id (min / mean). Peak memory = the maximum of the summed RSS of the child
and its descendants (PeakRSS in common.py). The ONNX export is built once before timing
(`encoders.export.prepare`, cached by model digest) and printed separately.

`--memory` mode: peak PSS and RSS of `fashion-batch embed` at several catalog sizes (default 20k and
200k), to show the job streams (memory flat as the catalog grows). With `--memory-model tiny` it
uses a tiny random-weight DistilBERT + the seed head (built here), so 200k rows take minutes rather
than the much longer MiniLM would: the pipeline's memory, not the model's, is what scales.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/common.py, also when imported from elsewhere

import catalogs  # noqa: E402
from common import ENV, cosine_to, count_rows, machine, read_output, timed  # noqa: E402
from peers import PEERS  # noqa: E402

VARIANTS = (*PEERS, "embed", "embed-ray", "embed-fast")
DEFAULT_VARIANTS = (
    "plain",
    "plain-per-file",
    "raydata",
    "daft",
    "embed",
    "embed-ray",
    "embed-fast",
)
DAFT_DIR = HERE / ".peers" / "daft"  # Daft stays out of the project's venv
DAFT_VERSION = "0.7.26"


# ------------------------------------------------------------------------------ set-up


def model_dir(name: str, workdir: Path) -> str:
    """A model dir for `minilm`, `seed` (built once in workdir) or a given dir."""
    from fashion_batch.encoders.models import resolve_model

    if name == "minilm":
        return resolve_model("builtin:minilm")
    if name != "seed":
        return resolve_model(name)
    return seed_architecture(workdir, "seed-size", dim=768, n_layers=6, n_heads=12, hidden=3072)


def seed_architecture(workdir: Path, name: str, dim: int, n_layers: int, n_heads: int, hidden: int):
    """A random-weight DistilBERT of these sizes (MiniLM tokenizer) + mean pooling + the seed's
    Dense head (768-d), built once in workdir/name."""
    from fashion_batch.encoders.models import build_seed_model, random_distilbert, resolve_model

    out = workdir / name
    if not (out / "modules.json").exists():
        base = random_distilbert(
            workdir / f"{name}-distilbert",
            resolve_model("builtin:minilm"),
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            hidden_dim=hidden,
            seed=0,
        )
        build_seed_model(base).save(str(out), safe_serialization=True)
    return str(out)


def daft_available() -> str | None:
    """None when Daft imports from DAFT_DIR (installing it there once), else why not."""
    probe = [sys.executable, "-c", "import daft"]
    env = os.environ | {"PYTHONPATH": str(DAFT_DIR)}
    if subprocess.run(probe, env=env, capture_output=True).returncode == 0:
        return None
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(DAFT_DIR)]
    done = subprocess.run([*pip, f"daft=={DAFT_VERSION}"], capture_output=True, text=True)
    if done.returncode != 0 or subprocess.run(probe, env=env).returncode != 0:
        return f"pip install daft=={DAFT_VERSION} failed: {done.stderr.strip()[-200:]}"
    return None


def onnx_available(model: str) -> str | None:
    """None when ST's own backend="onnx" loads this model offline, else why not."""
    code = f"import sentence_transformers as st; st.SentenceTransformer({model!r}, backend='onnx')"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ | ENV
    )
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1][:160]


def warm_backend(model: str, fast_flags: str | None) -> float | None:
    """Build the ONNX export outside the timed runs: the default's (`auto` is the fused ONNX
    graph on CPU actors) with `fast_flags` None, else the one the fast flags ask for, if any.
    A user pays it once per model (it is cached by the model's digest), not per run."""
    flags = shlex.split(fast_flags) if fast_flags is not None else ["--backend", "onnx"]
    if "--backend" not in flags:
        return None
    backend = flags[flags.index("--backend") + 1]
    if backend == "torch":
        return None
    backend = "onnx" if backend == "auto" else backend  # auto: the fused graph on CPU actors
    code = f"from fashion_batch.encoders.export import prepare; prepare({model!r}, {backend!r})"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | ENV)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- measuring


def command(variant: str, catalog: str, output: Path, model: str, fast_flags: str) -> list[str]:
    py = sys.executable
    if variant in PEERS:
        return [py, str(HERE / "peers.py"), variant, catalog, str(output), model]
    cmd = [py, "-m", "fashion_batch", "embed", "--input", catalog, "--output", str(output)]
    cmd += ["--model", model, "--overwrite"]
    extra = {"embed-fast": shlex.split(fast_flags), "embed-ray": ["--runner", "ray"]}
    return cmd + extra.get(variant, [])


def phases(log: Path) -> dict:
    """The `BENCH {json}` line a peer prints; for the job, its manifest's stage seconds."""
    found = re.findall(r"^BENCH (\{.*\})$", log.read_text(), flags=re.M)
    return json.loads(found[-1]) if found else {}


def run_variant(variant: str, catalog: str, out: Path, model: str, args, log: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    paths = [str(DAFT_DIR), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, paths))} if variant == "daft" else {}
    res = timed(command(variant, catalog, out, model, args.fast_flags), log, extra_env=env)
    res["phases"] = phases(log)
    if variant.startswith("embed"):
        manifest = json.loads((out / "manifest.json").read_text())
        res["phases"] = manifest.get("stage_seconds", {})
        res["startup"] = startup(res, manifest.get("timeline", {}))
    return res


def startup(res: dict, timeline: dict) -> dict:
    """Where a job's fixed costs go, in seconds, from its manifest's timeline and the process's
    spawn and exit times: interpreter + imports + CLI until `run` starts, planning (footers,
    model digest), Ray start-up and pool sizing, the pipeline until the first unit is back
    (actor start-up, model load, the first unit itself), and after the manifest until exit."""
    if "started_unix" not in timeline:
        return {}
    start = timeline["started_unix"]
    marks = {k: timeline.get(k) for k in ("inputs_checked", "ray_ready", "first_unit")}
    if None in marks.values():
        return {}
    return {
        "imports": start - res["spawned_unix"],
        "plan": marks["inputs_checked"],
        "ray_start": marks["ray_ready"] - marks["inputs_checked"],
        "to_first_unit": marks["first_unit"] - marks["ray_ready"],
        "first_unit_since_spawn": start + marks["first_unit"] - res["spawned_unix"],
        "model_ready_since_spawn": start + timeline["model_ready"] - res["spawned_unix"]
        if "model_ready" in timeline
        else None,
        "gate": timeline.get("gate_checked", timeline["total"]) - timeline["embedded"],
        "after_manifest": res["exited_unix"] - (start + timeline["total"]),
    }


def one_case(shape: str, model_name: str, args, workdir: Path) -> dict:
    """Every variant on one (shape, model), alternating order across repeats."""
    model = model_dir(model_name, workdir)
    catalog = catalogs.write(shape, args.listings, workdir / f"catalog-{shape}-{args.listings}")
    rows = count_rows(catalog)
    skipped = {}
    variants = list(args.variants)
    if "daft" in variants and (why := daft_available()):
        skipped["daft"] = why
    if "plain-onnx" in variants and (why := onnx_available(model)):
        skipped["plain-onnx"] = why
    variants = [v for v in variants if v not in skipped]
    export_s = warm_backend(model, None) if "embed" in variants else None
    if "embed-fast" in variants:
        export_s = (export_s or 0) + (warm_backend(model, args.fast_flags) or 0)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            out = workdir / f"out-{v}"
            log = workdir / f"{shape}-{model_name}-{v}.log"
            res = run_variant(v, catalog, out, model, args, log)
            runs[v].append(res)
            print(f"  {shape}/{model_name} {v:<14} {res['seconds']:6.1f} s", file=sys.stderr)
        # vectors of the last repeat, read before the next repeat deletes them
        if r == args.repeats - 1:
            outputs = {v: read_output(workdir / f"out-{v}") for v in variants}
    best = {v: min(runs[v], key=lambda x: x["seconds"]) for v in variants}
    base = "plain" if "plain" in variants else variants[0]
    return {
        "shape": shape,
        "model": model_name,
        "rows": rows,
        "tokens": catalogs.token_stats(catalog, model),
        "onnx_export_seconds_once": export_s,
        "skipped": skipped,
        "variants": {
            v: {
                "seconds_best": best[v]["seconds"],
                "seconds_all": [x["seconds"] for x in runs[v]],
                "rows_per_s": rows / best[v]["seconds"],
                "ratio_to_plain": best[base]["seconds"] / best[v]["seconds"],
                "phases": best[v]["phases"],
                "startup": best[v].get("startup", {}),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs[v]),
                "rows_written": len(outputs[v]),
                "cosine_to_plain": cosine_to(outputs[base], outputs[v]),
                "command": shlex.join(command(v, catalog, Path("OUT"), model, args.fast_flags)),
            }
            for v in variants
        },
    }


def throughput(args) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    result = {
        "machine": machine(),
        "listings": args.listings,
        "repeats": args.repeats,
        "fast_flags": args.fast_flags,
        "cases": [],
    }
    for model in args.models:
        for shape in args.shapes:
            result["cases"].append(one_case(shape, model, args, workdir))
            print(table(result), file=sys.stderr)
    print(table(result))
    return result


def table(result: dict) -> str:
    lines = [
        f"machine: {result['machine']}",
        f"{result['listings']} listings per catalog; best of {result['repeats']}; "
        f"fast flags: {result['fast_flags']}; × plain = plain's seconds / the variant's",
        "",
        "| shape | model | tokens (mean/p95) | variant | seconds | rows/s | × plain "
        "| encode-only s | cosine to plain (min / mean) | peak RSS MiB |",
        "|---|---|---|---|--:|--:|--:|--:|---|--:|",
    ]
    for case in result["cases"]:
        tok = case["tokens"]
        for v, r in case["variants"].items():
            c = r["cosine_to_plain"]
            encode = r["phases"].get("encode_s", r["phases"].get("embed_and_write"))
            enc = f"{encode:.1f}" if isinstance(encode, (int, float)) else ""
            lines.append(
                f"| {case['shape']} | {case['model']} | {tok['mean']:.0f}/{tok['p95']:.0f} "
                f"| {v} | {r['seconds_best']:.1f} | {r['rows_per_s']:.0f} "
                f"| {r['ratio_to_plain']:.2f}× | {enc} | {c['min']:.4f} / {c['mean']:.4f} "
                f"| {r['peak_rss_mb']:.0f} |"
            )
        for v, why in case["skipped"].items():
            lines.append(f"| {case['shape']} | {case['model']} | | {v} | skipped: {why} |||||")
    lines += ["", *startup_table(result)]
    return "\n".join(lines)


def startup_table(result: dict) -> list[str]:
    """The job's fixed costs per run (`startup`), beside plain's import + model load."""
    lines = [
        "Fixed costs, seconds: imports = interpreter + imports until the job starts; Ray start "
        "= joining Ray and sizing the pool (the local runner: choosing it); model ready = spawn "
        "to the local runner's model loaded, ready for its first batch (Ray's actors load theirs "
        "in their own processes: no mark); first unit = spawn to the first unit back; gate = the "
        "quality gate after the last unit; exit = manifest to exit.",
        "",
        "| shape | model | variant | imports | plan | Ray start | model ready since spawn "
        "| to first unit | first unit since spawn | gate | exit |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case in result["cases"]:
        for v, r in case["variants"].items():
            s = r.get("startup") or {}
            if s:
                ready = s.get("model_ready_since_spawn")
                ready = f"{ready:.1f}" if ready is not None else ""
                lines.append(
                    f"| {case['shape']} | {case['model']} | {v} | {s['imports']:.1f} "
                    f"| {s['plan']:.1f} | {s['ray_start']:.1f} | {ready} "
                    f"| {s['to_first_unit']:.1f} "
                    f"| {s['first_unit_since_spawn']:.1f} | {s['gate']:.1f} "
                    f"| {s['after_manifest']:.1f} |"
                )
            elif v == "plain" and r["phases"]:
                p = r["phases"]
                fixed = p.get("import_s", 0) + p.get("load_s", 0)
                lines.append(
                    f"| {case['shape']} | {case['model']} | plain | {fixed:.1f} (import+load) "
                    "| | | | | | | |"
                )
    return lines


def tiny_model(workdir: Path) -> str:
    """A tiny random DistilBERT + mean pooling + the seed's Dense head (768-d), MiniLM tokenizer."""
    return seed_architecture(workdir, "tiny-seed", dim=32, n_layers=2, n_heads=2, hidden=64)


def memory(args) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = tiny_model(workdir) if args.memory_model == "tiny" else args.memory_model
    sizes = [int(s) for s in args.sizes.split(",")]
    flags = shlex.split(args.memory_flags)
    rows = []
    for n in sizes:
        catalog = catalogs.write("short", n, workdir / f"catalog-short-{n}")
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


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--listings", type=int, default=2000, help="rows per generated catalog")
    p.add_argument("--shapes", default=",".join(catalogs.SHAPES), type=_csv)
    p.add_argument("--models", default="minilm,seed", type=_csv, help="minilm, seed or dirs")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), type=_csv)
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
