"""The embed quality gate: checks of the vectors a run wrote, after its last unit and before its
manifest, so that a broken run is never published as finished (docs/quality.md).

* parity (always on, `--parity-rows`, `--min-parity-cos`): a deterministic sample of committed
  rows is re-embedded on the driver by the reference model (reference.py: torch fp32, or for
  int8 the fp32 ONNX graph it was quantized from); the min and mean cosine to the stored vectors
  catch a broken int8/ONNX/fp16 path or a faulty actor, which no check of the model alone can
  see;
* probe (with `--probe-queries`, `--min-ndcg`): NDCG@10 and Recall@10 of the probe queries
  against the stored vectors (evaluate/stored.py, the scorer `evaluate --embeddings` uses),
  which catches a bad model, which parity cannot (the reference runs the same model).

Both results go to OUTPUT/report/gate.json on every run that reaches the gate, and to the
manifest's `gate` when it passes. A refused run raises GateError (exit 3) naming each check, its
value and its threshold; no manifest is written, so OUTPUT stays an unfinished output that no
reader trusts. The gate's settings are not in the run fingerprint: rerunning with looser
thresholds resumes every committed unit and only re-checks.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fashion_batch.embed import recheck, reference
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.layout import STAGING_DIR
from fashion_batch.embed.plan import Plan, Unit
from fashion_batch.errors import GateError, InputError
from fashion_batch.evaluate.drift import cosines
from fashion_batch.io.atomic import write_json_atomic
from fashion_batch.io.fs import redact

GATE_REPORT = posixpath.join("report", "gate.json")  # under OUTPUT
SLICE_ROWS = 64  # parity rows taken from the head of one unit: a few units, each read in part
PROBE_METRICS = ("ndcg@10", "recall@10", "mrr@10", "queries", "skipped_queries", "similarity")


def load_probe(config: EmbedConfig) -> list[dict] | None:
    """The probe queries, read and checked before anything is written (a bad file is exit 2)."""
    if not config.probe_queries:
        return None
    from fashion_batch.evaluate.job import read_queries

    return read_queries(config.probe_queries, flag="--probe-queries")


def start_reference(
    config: EmbedConfig, probe: list[dict] | None, rows: int, cached=None, cached_queries=None
):
    """Load the reference model in a background thread while the pipeline runs, so that the
    gate after the last unit only encodes: the driver mostly waits on the pipeline, and the
    import of torch and the model load would otherwise run alone at the end. None when no check
    is expected to need the model: parity off or served by the previous output's references
    (`cached`, recheck.py) for a run of about `rows` rows, and no probe or every probe query's
    reference kept (`cached_queries`)."""
    wanted = parity_rows(config, rows)
    parity_cached = wanted == 0 or recheck.enough(cached, wanted)
    if parity_cached and (not probe or _kept_queries(probe, cached_queries) is not None):
        return None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate-reference")
    future = pool.submit(reference.load, config)
    pool.shutdown(wait=False)
    return future


def _kept_queries(probe: list[dict], cached_queries) -> np.ndarray | None:
    """The probe queries' kept reference vectors, or None unless every one is kept."""
    return recheck.query_vectors(cached_queries, [q["query"] for q in probe])


def check(
    config: EmbedConfig,
    plan: Plan,
    stats: list[dict],
    probe: list[dict] | None,
    loading: Future | None = None,
    rechecked: pa.Table | None = None,
    references: tuple[pa.Table | None, pa.Table | None] = (None, None),
) -> tuple[dict, np.ndarray | None]:
    """Run the checks over the units in `stats`; write OUTPUT/report/gate.json (and, when they
    pass, the references the next night reuses); return the report and the probe queries'
    vectors (None without a probe), or raise GateError when a check fails.

    `loading`: start_reference's model; `rechecked`: the rows tonight's actors embedded
    again; `references`: the previous output's parity and probe references (recheck.py)."""
    written = sorted((s for s in stats if s["rows_out"] > 0), key=lambda s: s["unit"])
    wanted = parity_rows(config, sum(s["rows_out"] for s in written)) if written else 0
    cached = recheck.covered(rechecked, references[0], wanted)
    queries = _kept_queries(probe, references[1]) if probe and written else None
    model = None
    if written and ((wanted and cached is None) or (probe and queries is None)):
        model = loading.result() if loading is not None else reference.load(config)
    if cached is not None:
        parity, kept = parity_from_references(cached, recheck.kind(references[0]))
    elif wanted:
        parity, kept = measure_parity(config, plan, written, model, wanted)
    else:
        parity, kept = _no_rows(config), None
    checks = [_check("parity_min_cos", parity["min_cos"], config.min_parity_cos)]
    report = {"parity": parity, "probe": None}
    if probe and written:
        texts = [q["query"] for q in probe]
        if queries is None:
            queries, query_kind = model.encode(texts), model.kind
        else:
            query_kind = recheck.kind(references[1])
        report["probe"] = _probe(config, plan, written, queries, probe)
        checks.append(_check("probe_ndcg@10", report["probe"]["ndcg@10"], config.min_ndcg))
    report["checks"] = checks
    report["passed"] = all(c["passed"] for c in checks)
    if report["passed"]:
        texts = [q["query"] for q in probe] if report["probe"] else []
        kinds = (parity.get("kind"), query_kind if texts else None)
        report |= recheck.keep(
            plan.out_fs, plan.output, plan.model["sha256"], kept, texts, queries, kinds
        )
    write_json_atomic(plan.out_fs, report, posixpath.join(plan.output, GATE_REPORT))
    if not report["passed"]:
        raise GateError(_refusal(config, report))
    return report, queries


def parity_from_references(cached: pa.Table, kind: str) -> tuple[dict, tuple]:
    """Parity of tonight's fresh vectors against references of `kind` kept by an earlier
    night."""
    cos = cosines(recheck.as_matrix(cached["embedding"]), recheck.as_matrix(cached["reference"]))
    worst = int(np.argmin(cos))
    parity = {
        "rows": len(cached),
        "min_cos": float(cos.min()),
        "mean_cos": float(cos.mean()),
        "worst_id": cached["id"][worst].as_py(),
        "reference": f"{kind}, kept from an earlier night for the same text and model "
        f"({recheck.REFERENCES}); the vectors were embedded again tonight",
        "kind": kind,
    }
    kept = (cached["id"].combine_chunks(), cached["content_hash"].combine_chunks())
    return parity, (*kept, recheck.as_matrix(cached["reference"]))


_FLAGS = {"parity_min_cos": "--min-parity-cos", "probe_ndcg@10": "--min-ndcg"}


def _check(name: str, value: float | None, threshold: float | None) -> dict:
    """One check's record; a check with no value (nothing to compare) or no threshold passes."""
    passed = value is None or threshold is None or value >= threshold
    return {
        "name": name,
        "flag": _FLAGS[name],
        "value": value,
        "threshold": threshold,
        "passed": passed,
    }


def _refusal(config: EmbedConfig, report: dict) -> str:
    def line(c: dict) -> str:
        relation = ">=" if c["passed"] else "<"
        verdict = "ok" if c["passed"] else "FAILED"
        if c["value"] is None:
            return f"{c['name']}: nothing to compare (not checked)"
        if c["threshold"] is None:
            return f"{c['name']} {c['value']:.4f} (recorded, no threshold)"
        return f"{c['name']} {c['value']:.4f} {relation} {c['flag']} {c['threshold']} ({verdict})"

    output = redact(config.output)
    return (
        f"quality gate refused to publish {output}: "
        + "; ".join(line(c) for c in report["checks"])
        + f". Nothing was published: the new vectors stay staged in "
        f"{posixpath.join(output, STAGING_DIR)}/, which readers ignore, and {output} holds what "
        f"it held before (report: {posixpath.join(output, GATE_REPORT)}). Rerun the same "
        "command with looser thresholds to publish these vectors as they are, or fix the model "
        "or backend and rerun with --overwrite"
    )


def _no_rows(config: EmbedConfig) -> dict:
    kind = reference.wanted(config)
    return {"rows": 0, "min_cos": None, "mean_cos": None, "reference": kind, "kind": kind}


def parity_rows(config: EmbedConfig, rows_out: int) -> int:
    """--parity-rows, or by default 1% of the rows written (64 to 256): the reference model costs
    about what the job spent per row, so the check costs at most about 1%
    of the run's encoding on a catalog of any size, and a few hundred rows on a real nightly."""
    if config.parity_rows is not None:
        return config.parity_rows
    return recheck.sample_size(rows_out)


def measure_parity(
    config: EmbedConfig, plan: Plan, written: list[dict], model, rows: int
) -> tuple[dict, tuple | None]:
    """Min and mean cosine between stored vectors and the reference's, over a sample of about
    `rows` rows; and (ids, content hashes, reference vectors) of the sample."""
    ids, hashes, texts, stored = parity_sample(config, plan, written, rows)
    if not texts:
        return _no_rows(config), None
    vectors = model.encode(texts)  # (n, D)
    cos = cosines(stored, vectors)  # (n,)
    worst = int(np.argmin(cos))
    parity = {
        "rows": len(texts),
        "min_cos": float(cos.min()),
        "mean_cos": float(cos.mean()),
        "worst_id": ids[worst].as_py(),
        "reference": model.kind,
        "kind": model.kind,
    }
    return parity, (ids, hashes, vectors)


def parity_sample(
    config: EmbedConfig, plan: Plan, written: list[dict], rows: int
) -> tuple[pa.Array, pa.Array, list[str], np.ndarray]:
    """(ids, content hashes, cleaned texts, stored vectors (n, D)) of about `rows` committed
    rows: the head of units spread evenly over the run, the same units for the same run. A
    unit's head is prepared exactly as the run prepared it (PrepareText, the same duplicate
    rows), and its rows are matched to the unit's file by id (ids are unique in the output)."""
    from fashion_batch.embed.stages import HASH, REASON, TEXT, PrepareText, prepare_unit

    if rows == 0 or not written:
        return pa.array([]), pa.array([], pa.string()), [], np.zeros((0, 0), np.float32)
    units = {u.index: u for u in plan.units}
    n_units = min(len(written), -(-rows // SLICE_ROWS))
    picks = np.linspace(0, len(written) - 1, n_units).round().astype(int)
    per_unit = -(-rows // n_units)
    prepare = PrepareText.for_config(config, plan.duplicates)
    ids, hashes, texts, vectors = [], [], [], []
    for s in (written[i] for i in picks):
        u = units[s["unit"]]
        head = Unit(u.index, u.path, u.row_group, u.offset, min(per_unit, u.length), u.file_row)
        t = prepare_unit(plan.in_fs, head, config.columns, prepare)
        t = t.filter(pc.is_null(t.column(REASON)))
        with plan.out_fs.open_input_file(posixpath.join(plan.output, s["files"][0])) as f:
            part = pq.read_table(f)
        key = t.column(config.id_column).combine_chunks()
        key = key.cast(part.schema.field(config.id_column).type)
        pos = pc.index_in(key, value_set=part.column(config.id_column))
        found = pc.is_valid(pos)
        t, pos, key = t.filter(found), pos.filter(found), key.filter(found)
        emb = part.column("embedding").combine_chunks().take(pos)
        ids.append(key)
        hashes.append(t.column(HASH).combine_chunks())
        texts += t.column(TEXT).to_pylist()
        flat = emb.flatten().to_numpy(zero_copy_only=False)  # (n * D,)
        vectors.append(flat.reshape(len(pos), emb.type.list_size))  # (n, D)
    stored = np.concatenate(vectors).astype(np.float32, copy=False)
    return pa.concat_arrays(ids), pa.concat_arrays(hashes), texts, stored


def _probe(
    config: EmbedConfig, plan: Plan, written: list[dict], queries: np.ndarray, probe: list[dict]
) -> dict:
    """The probe queries' metrics against the stored vectors of this run's units."""
    from fashion_batch.evaluate.snapshots import Snapshot, similarity_name
    from fashion_batch.evaluate.stored import score_vectors

    files = [f for s in written for f in s["files"]]
    manifest = {"files": files, "id_column": config.id_column}
    units = Snapshot(redact(config.output), plan.out_fs, plan.output, manifest)
    try:
        metrics = score_vectors(units, queries, probe, similarity_name(plan.model["path"]))
    except InputError as e:
        raise InputError(f"--probe-queries {config.probe_queries}: {e}") from e
    return {"queries_file": redact(config.probe_queries)} | {
        k: metrics[k] for k in PROBE_METRICS if k in metrics
    }
