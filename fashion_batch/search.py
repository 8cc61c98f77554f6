"""`fashion-batch search`: top-k listings for a query over a finished embed output.

Brute force on purpose: one pass over the part files, one part in memory at a time (a part is at
most `--rows-per-part` rows, 4096 × 768 float32 = 12 MiB by default), keeping a running top-k. It
is a check of what the nightly job produced — same model, same text path, same similarity — not a
serving index.

Why the checks: scores against vectors from another model are meaningless but look plausible, so
the model digest (every file that changes its vectors) must equal the one the manifest recorded;
and the query goes through the same encoder path as the job (encoder.load_model +
Encoder.encode, normalized iff the job normalized), scored with the model's own similarity
function (`model.similarity`: cosine for MiniLM, dot product for the seed architecture).
Without `--model` / `--catalog`, the model and the input the manifest recorded are used.

`--embeddings lancedb://PATH` searches an `embed --sink` table instead (sinks/lancedb.py: exact
below its index threshold, its ANN index above), with the same model check against the digest
the table records and the same scores (the table's distance turned back into the similarity).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.layout import embedding_files
from fashion_batch.errors import InputError, UserError
from fashion_batch.io.inputs import check_schema, list_input_files
from fashion_batch.options import option
from fashion_batch.sinks import SCHEME
from fashion_batch.text import Template


@dataclass
class SearchConfig:
    """Settings of one search; the CLI builds it."""

    embeddings: str = option(
        help="an embed --output (local or s3://), or an embed --sink table: lancedb://PATH"
    )
    catalog: str | None = option(
        None, help="the catalog that was embedded, for the text (default: the manifest's input)"
    )
    # must be the model the job used (checked against the digest its manifest or table records)
    model: str | None = option(
        None, help="the model the embeddings were made with (default: the manifest's or table's)"
    )
    query: str = option("", positional=True, help="the query text")
    table: str = option("listings", help="with --embeddings lancedb://PATH: the table to search")
    k: int = option(10, short="-k", flag="--top-k", metavar="K", help="how many listings")
    id_column: str = option("listing_id", help="the listing id column")
    text_template: str = option(
        "{title}. {description}", help="how a listing's text is composed (as for embed)"
    )
    width: int = 80  # characters of listing text printed per hit

    def __post_init__(self):
        if self.k <= 0:
            raise InputError(f"-k must be > 0, got {self.k}")
        if not self.query.strip():
            raise InputError("the query is empty")
        try:
            self.template = Template(self.text_template)
        except ValueError as e:
            raise InputError(str(e)) from e


# ------------------------------------------------------------------------------ stages


def load_manifest(config: SearchConfig) -> tuple[pafs.FileSystem, str, dict]:
    """The output's filesystem, path and manifest; no manifest = not a finished embed output."""
    from fashion_batch.evaluate.stored import open_output

    return open_output(config.embeddings)


def load_table(config: SearchConfig):
    """An embed --sink table (lancedb://PATH, --table) and its metadata as the manifest keys
    `run` reads (model, normalized, id_column)."""
    from fashion_batch.sinks import check_table_name, parse_sink
    from fashion_batch.sinks.lancedb import check_ours, connect, open_table

    target = parse_sink(config.embeddings, flag="--embeddings")
    try:
        table = open_table(connect(target), check_table_name(config.table, flag="--table"))
    except UserError:
        raise
    except Exception as e:
        raise InputError(f"--embeddings {target.uri}: cannot open the database: {e}") from e
    if table is None:
        raise InputError(f"--embeddings {target.uri}: no table {config.table!r} (see --table)")
    meta = check_ours(table, config.table)
    manifest = {
        "model": {"name": meta["model"], "sha256": meta["model_sha256"]},
        "normalized": meta["normalized"] == "true",
        "id_column": meta["id_column"],
    }
    return table, manifest


def catalog_of(config: SearchConfig, manifest: dict) -> str:
    """--catalog, or the input the manifest recorded (unless credentials were redacted from it)."""
    catalog = config.catalog or manifest.get("input")
    if not catalog or "***" in catalog:
        raise InputError(
            f"--embeddings {config.embeddings}: its manifest records no usable input "
            f"({catalog}); pass --catalog"
        )
    return catalog


def encode_query(model, query: str, normalize: bool) -> np.ndarray:
    """The query through the job's encode path: (1, D) float32."""
    from fashion_batch.encoders.models import Encoder

    return Encoder(model, batch_size=1, normalize=normalize).encode([query])


def part_files(fs: pafs.FileSystem, output: str, manifest: dict) -> list[str]:
    return [posixpath.join(output, f) for f in embedding_files(manifest.get("files", []))]


def top_k(
    model, query: np.ndarray, fs: pafs.FileSystem, files: list[str], id_column: str, k: int
) -> list[tuple[object, float]]:
    """Brute-force top-k over the part files, one file in memory at a time.

    Returns [(id, score)] best first; ties are broken by (file, row) order, so the result is
    deterministic.
    """
    best_ids: list = []
    best_scores = np.zeros(0, dtype=np.float64)
    for path in files:
        with fs.open_input_file(path) as f:
            part = pq.read_table(f)
        if id_column not in part.column_names:
            raise InputError(
                f"{path}: no id column {id_column!r} (has: {', '.join(part.column_names)}); "
                "check --id-column"
            )
        if not len(part):
            continue
        emb = part.column("embedding").combine_chunks()
        dim = emb.type.list_size
        vectors = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)  # (n, D)
        if dim != query.shape[1]:
            raise InputError(f"{path}: embeddings are {dim}-d, the model gives {query.shape[1]}-d")
        scores = model.similarity(query, vectors).cpu().numpy()[0].astype(np.float64)  # (n,)
        ids = part.column(id_column).to_pylist()
        all_scores = np.concatenate([best_scores, scores])
        all_ids = best_ids + ids
        keep = np.argsort(-all_scores, kind="stable")[:k]
        best_scores = all_scores[keep]
        best_ids = [all_ids[i] for i in keep]
    return list(zip(best_ids, best_scores.tolist(), strict=True))


def listing_texts(config: SearchConfig, catalog: str, ids: list) -> dict:
    """{id: cleaned template text} for the hits, read from the catalog (id + template columns)."""
    fs, files = list_input_files(catalog)
    columns = list(dict.fromkeys([config.id_column, *config.template.columns]))
    wanted = pa.array(ids)
    texts: dict = {}
    for path in files:
        with fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
        check_schema(path, schema, columns)
        with fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=columns)
        table = table.filter(
            pc.is_in(
                table.column(config.id_column), wanted.cast(schema.field(config.id_column).type)
            )
        )
        for row in table.to_pylist():
            texts.setdefault(row[config.id_column], config.template.render(row))
    return texts


# ------------------------------------------------------------------------------ job


def run(config: SearchConfig) -> list[dict]:
    """[{rank, id, score, text}] best first."""
    from fashion_batch.encoders.models import load_model
    from fashion_batch.evaluate.stored import check_model

    lancedb = config.embeddings.startswith(SCHEME)
    if lancedb:
        table, manifest = load_table(config)
    else:
        fs, output, manifest = load_manifest(config)
    model_name = check_model(config.model, manifest, config.embeddings)
    job_id_column = manifest.get("id_column", config.id_column)
    if job_id_column != config.id_column:
        raise InputError(
            f"--id-column {config.id_column!r}: the embeddings were made with "
            f"--id-column {job_id_column!r}"
        )
    model = load_model(model_name, None, "fp32")  # one query: fp32 wherever it runs
    query = encode_query(model, config.query, bool(manifest.get("normalized", False)))
    if lancedb:
        from fashion_batch.sinks.lancedb import nearest

        hits = nearest(table, query, config.k)
    else:
        hits = top_k(model, query, fs, part_files(fs, output, manifest), config.id_column, config.k)
    texts = listing_texts(config, catalog_of(config, manifest), [i for i, _ in hits])
    return [
        {"rank": r, "id": i, "score": s, "text": texts.get(i)}
        for r, (i, s) in enumerate(hits, start=1)
    ]


def format_results(results: list[dict], width: int = 80) -> str:
    lines = [f"{'rank':>4}  {'score':>8}  {'id':<12}  text"]
    for r in results:
        text = r["text"] if r["text"] is not None else "(not in --catalog)"
        if len(text) > width:
            text = text[: width - 1] + "…"
        lines.append(f"{r['rank']:>4}  {r['score']:>8.4f}  {str(r['id']):<12}  {text}")
    return "\n".join(lines)
