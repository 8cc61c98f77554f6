"""`fashion-batch evaluate`: a model's retrieval metrics on a catalog and a query set.

The catalog's listing texts (rendered, cleaned and quarantined exactly as `embed` does) are the
corpus and `queries.jsonl` gives each query's relevant listing ids (metrics.py says how they are
scored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from fashion_batch.errors import InputError
from fashion_batch.evaluate.metrics import rank_and_score
from fashion_batch.io.fs import filesystem
from fashion_batch.io.inputs import list_input_files
from fashion_batch.options import option
from fashion_batch.text import Template


@dataclass
class EvaluateConfig:
    """Settings of `fashion-batch evaluate`.

    Args:
        model: model dir, hub id or `builtin:minilm`.
        catalog: Parquet file or directory (local or s3://) with the id and template columns.
        queries: JSONL file, one `{"query_id", "query", "relevant_ids": [...]}` per line.
        k: metric cutoff.
        id_column: the listing id column.
        text_template: how a listing's text is composed (the same as `embed`'s).
        batch_size: texts per forward pass.
        device: `cuda`, `cpu` or None for CUDA when present.
    """

    model: str = option(help="model dir, hub id or builtin:minilm")
    catalog: str = option(help="Parquet file or directory; local or s3://")
    queries: str = option(help="JSONL: query, relevant_ids per line")
    k: int = option(10, short="-k", flag="--top-k", metavar="K", help="metric cutoff")
    id_column: str = option("listing_id", help="the listing id column")
    text_template: str = option(
        "{title}. {description}", help="how a listing's text is composed (as for embed)"
    )
    batch_size: int = option(64, help="texts per forward pass")
    device: str | None = None

    def __post_init__(self):
        for name in ("model", "catalog", "queries", "id_column"):
            if not getattr(self, name):
                raise InputError(f"--{name.replace('_', '-')} must not be empty")
        if self.k < 1:
            raise InputError(f"-k must be >= 1, got {self.k}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        try:
            self._template = Template(self.text_template)
        except ValueError as e:
            raise InputError(str(e)) from e


def read_catalog_texts(
    uri: str, id_column: str, template: Template
) -> tuple[list[Any], list[str], int]:
    """(ids, texts, skipped) of a Parquet catalog under `embed`'s own discovery and quarantine
    rules (embed.stages.PrepareText): the corpus is exactly the rows `embed` would embed, with
    the text `embed` would give the model."""
    from fashion_batch.embed.plan import find_duplicate_rows, plan_units
    from fashion_batch.embed.stages import REASON, TEXT, PrepareText, prepare_unit

    fs, files = list_input_files(uri, flag="--catalog")
    columns = list(dict.fromkeys([id_column, *template.columns]))
    units, _, rows_in = plan_units(fs, files, id_column, columns[1:], rows_per_unit=1 << 30)
    prepare = PrepareText(template.template, id_column, find_duplicate_rows(fs, files, id_column))
    ids, texts = [], []
    for unit in units:
        t = prepare_unit(fs, unit, columns, prepare)
        t = t.filter(pc.is_null(t.column(REASON)))
        ids += t.column(id_column).to_pylist()
        texts += t.column(TEXT).to_pylist()
    if not ids:
        raise InputError(f"--catalog {uri}: no listing with an id and a non-empty text")
    return ids, texts, rows_in - len(ids)


def read_queries(uri: str, flag: str = "--queries") -> list[dict]:
    """The queries JSONL: one object per line with `query` (text) and `relevant_ids` (list);
    errors name `flag`."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            lines = f.read().decode("utf-8").splitlines()
    except FileNotFoundError as e:
        raise InputError(f"{flag} {uri}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{flag} {uri}: cannot read: {e}") from e
    queries = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{flag} {uri}:{n}: not JSON: {e}") from e
        if not isinstance(q, dict) or not isinstance(q.get("query"), str):
            raise InputError(f"{flag} {uri}:{n}: needs a string field 'query'")
        if not isinstance(q.get("relevant_ids"), list):
            raise InputError(f"{flag} {uri}:{n}: needs a list field 'relevant_ids'")
        queries.append(q)
    if not queries:
        raise InputError(f"{flag} {uri}: no queries")
    return queries


def run(config: EvaluateConfig) -> dict[str, float]:
    """Embed the catalog and the queries with `config.model` and score the ranking.

    Relevant ids missing from the catalog (or quarantined there) are ignored; a query left without
    any relevant listing is skipped and counted in `skipped_queries`.

    Returns:
        {"ndcg@k", "mrr@k", "recall@k", "queries", "skipped_queries", "corpus"}.
    """
    from fashion_batch.encoders.models import load_model

    queries = read_queries(config.queries)
    ids, texts, _ = read_catalog_texts(config.catalog, config.id_column, config._template)
    position = {row_id: i for i, row_id in enumerate(ids)}
    kept, relevant = [], []
    for q in queries:
        rel = {position[r] for r in q["relevant_ids"] if r in position}
        if rel:
            kept.append(q["query"])
            relevant.append(rel)
    model = load_model(config.model, config.device)
    metrics = rank_and_score(model, kept, texts, relevant, config.k, config.batch_size)
    metrics["skipped_queries"] = len(queries) - len(kept)
    metrics["corpus"] = len(texts)
    return metrics


def summary(metrics: dict[str, float]) -> str:
    """One line per metric, as `fashion-batch evaluate` prints them."""
    return "\n".join(
        f"{name:>16}  {value:.4f}" if isinstance(value, float) else f"{name:>16}  {value}"
        for name, value in metrics.items()
    )
