"""`fashion-batch replay-quarantine SNAPSHOT --output NEW --fix-template T`: a finished output's
quarantine, replayed under a fix (docs/quarantine.md).

A replay is an incremental embed run (`--previous SNAPSHOT`) with SNAPSHOT's own settings (input,
model, template, normalize, id column, backend, precision, limit: read from its manifest) plus
the fix (`--fix-template`, `--fix-invalid-utf8`, stages.PrepareText). So NEW is a complete
snapshot with its own manifest, built by the one embed pipeline: each row SNAPSHOT embedded has
the same id and text and is carried over (its vector copied, not recomputed; only the small
sample every incremental run embeds again for its checks, embed/recheck.py, is recomputed by the
same model and backend), each row the fix
accepts is embedded now, and every other row is quarantined again with its reason. SNAPSHOT is
only read. Afterwards NEW's manifest gets a `replay` entry: what was replayed, under which fix,
how many of SNAPSHOT's quarantined rows NEW embedded, and how many of the kinds the fix targets
it still quarantines.

Refused (exit 2) before anything is written: a SNAPSHOT without a manifest; NEW equal to,
inside or around SNAPSHOT; no fix; a fix that SNAPSHOT was already made with; a SNAPSHOT whose
quarantine holds no row of a kind the fix can recover; a manifest whose input is recorded
redacted, without `--input`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.layout import (
    INVALID_UTF8,
    MANIFEST,
    QUARANTINE_DIR,
    TEMPLATE_FIXABLE,
    embedding_files,
)
from fashion_batch.errors import InputError
from fashion_batch.io.atomic import write_json_atomic
from fashion_batch.io.fs import filesystem, redact
from fashion_batch.options import option


@dataclass
class ReplayConfig:
    """Settings of `fashion-batch replay-quarantine`; the rest comes from SNAPSHOT's manifest."""

    snapshot: str = option(
        positional=True,
        help="a finished embed output whose quarantine is replayed (local or s3://); only read",
    )
    output: str = option(help="the new snapshot's directory (local or s3://)")
    fix_template: str | None = option(
        None,
        metavar="TEMPLATE",
        help="render the rows SNAPSHOT quarantined as empty_text or template_error with this "
        "template (e.g. '{title}. {category}')",
    )
    fix_invalid_utf8: bool = option(
        False,
        help="embed the rows SNAPSHOT quarantined as invalid_utf8, each bad byte shown as U+FFFD",
    )
    input: str | None = option(
        None,
        help="the catalog to read (default: the input SNAPSHOT's manifest records; needed where "
        "that was recorded with its credentials redacted, or has moved)",
    )
    model: str | None = option(
        None,
        help="the model (default: the manifest's; must be the same weights, checked by digest)",
    )
    shared_fs: bool = option(
        False, help="local paths are on storage every Ray node mounts (as for embed)"
    )
    extra: dict = field(default_factory=dict)  # recorded in NEW's manifest (the command line)

    def __post_init__(self):
        if self.fix_template is None and not self.fix_invalid_utf8:
            raise InputError(
                "replay-quarantine needs a fix: --fix-template TEMPLATE and/or --fix-invalid-utf8"
            )


def run(config: ReplayConfig) -> dict:
    """Replay SNAPSHOT's quarantine into NEW; return NEW's manifest (with its `replay` entry)."""
    from fashion_batch.embed.job import run as embed_run
    from fashion_batch.evaluate.stored import open_output

    fs, path, manifest = open_output(config.snapshot, "SNAPSHOT")
    _check_apart(config)
    embed = embed_config(config, manifest)
    targets = targeted_reasons(config, manifest)
    new = embed_run(embed)
    record = replay_record(config, embed, targets, fs, path, manifest, new)
    if new.get("replay") == record:
        return new  # a rerun of a finished replay
    new = {**new, "replay": record}
    out_fs, out_path = filesystem(config.output)
    write_json_atomic(out_fs, new, posixpath.join(out_path, MANIFEST))
    return new


def _check_apart(config: ReplayConfig) -> None:
    """NEW is a directory of its own: not SNAPSHOT, not inside it, not around it."""
    old_fs, old = filesystem(config.snapshot)
    new_fs, new = filesystem(config.output)
    if old_fs.type_name != new_fs.type_name:
        return
    if old == new or new.startswith(old.rstrip("/") + "/") or old.startswith(new.rstrip("/") + "/"):
        raise InputError(
            f"--output {redact(config.output)} overlaps SNAPSHOT {redact(config.snapshot)}: a "
            "replay writes a new snapshot beside it and never changes SNAPSHOT"
        )


def embed_config(config: ReplayConfig, manifest: dict) -> EmbedConfig:
    """The embed run that replays SNAPSHOT: its recorded settings, the fix, `--previous`."""
    recorded = manifest.get("fix_template")
    if config.fix_template is not None and recorded not in (None, config.fix_template):
        raise InputError(
            f"SNAPSHOT {redact(config.snapshot)} was itself made with --fix-template "
            f"{recorded!r}; replaying it under another one could quarantine rows that one "
            f"recovered: replay the output it was made from instead "
            f"({manifest.get('replay', {}).get('of', 'its replay.of')})"
        )
    fix_template = config.fix_template or recorded
    fix_invalid_utf8 = config.fix_invalid_utf8 or bool(manifest.get("fix_invalid_utf8"))
    if (fix_template, fix_invalid_utf8) == (recorded, bool(manifest.get("fix_invalid_utf8"))):
        raise InputError(
            f"SNAPSHOT {redact(config.snapshot)} was already made with this fix: nothing to replay"
        )
    source = config.input or manifest["input"]
    if config.input is None and "***" in source:
        raise InputError(
            f"SNAPSHOT {redact(config.snapshot)}: its manifest records the input with its "
            f"credentials redacted ({source}): pass --input"
        )
    return EmbedConfig(
        input=source,
        output=config.output,
        model=config.model or manifest["model"]["name"],
        id_column=manifest["id_column"],
        text_template=manifest["text_template"],
        fix_template=fix_template,
        fix_invalid_utf8=fix_invalid_utf8,
        precision=manifest.get("precision", "auto"),
        backend=manifest.get("backend", "auto"),
        normalize=manifest["normalized"],
        limit=manifest.get("limit"),
        previous=config.snapshot,
        shared_fs=config.shared_fs,
        extra=config.extra,
    )


def targeted_reasons(config: ReplayConfig, manifest: dict) -> list[str]:
    """The quarantine reasons the fix can recover; refuse a SNAPSHOT that quarantined none."""
    targets = [*TEMPLATE_FIXABLE] if config.fix_template or manifest.get("fix_template") else []
    if config.fix_invalid_utf8:
        targets.append(INVALID_UTF8)
    counts = manifest.get("quarantine_reasons", {})
    if not any(counts.get(r) for r in targets):
        held = ", ".join(f"{r}={n}" for r, n in counts.items() if n) or "empty"
        raise InputError(
            f"SNAPSHOT {redact(config.snapshot)} quarantined no row as {' or '.join(targets)} "
            f"(its quarantine: {held}): nothing this fix can recover; rows with a missing, "
            "invalid or duplicate id are never replayed"
        )
    return targets


def replay_record(
    config: ReplayConfig,
    embed: EmbedConfig,
    targets: list[str],
    fs: pafs.FileSystem,
    path: str,
    manifest: dict,
    new: dict,
) -> dict:
    """NEW's `replay` entry: SNAPSHOT's quarantined rows that NEW embedded (by their reason in
    SNAPSHOT), and NEW's quarantine counts of the reasons the fix targets."""
    quarantined = _quarantined_ids(fs, path, manifest, targets)
    recovered = dict.fromkeys(targets, 0)
    if len(quarantined):
        new_fs, new_path = filesystem(config.output)
        ids = quarantined.column("id")
        found = pa.array([False] * len(quarantined))
        for name in _parts(new):
            with new_fs.open_input_file(posixpath.join(new_path, name)) as f:
                embedded = pq.read_table(f, columns=[embed.id_column]).column(0)
            found = pc.or_(found, pc.is_in(ids, value_set=embedded.cast(ids.type)))
        for reason in quarantined.filter(found).column("reason").to_pylist():
            recovered[reason] += 1
    reasons = new.get("quarantine_reasons", {})
    return {
        "of": redact(config.snapshot),
        "of_run": manifest.get("run_digest"),
        "fix_template": embed.fix_template,
        "fix_invalid_utf8": embed.fix_invalid_utf8,
        "recovered": sum(recovered.values()),
        "recovered_by_reason": recovered,
        "still_quarantined": {r: reasons.get(r, 0) for r in targets},
    }


def _parts(manifest: dict) -> list[str]:
    return embedding_files(manifest["files"])


def _quarantined_ids(fs: pafs.FileSystem, path: str, manifest: dict, targets: list) -> pa.Table:
    """(id, reason) of SNAPSHOT's quarantined rows with a targeted reason (they all have ids)."""
    tables = []
    for name in manifest["files"]:
        if not name.startswith(QUARANTINE_DIR + "/"):
            continue
        with fs.open_input_file(posixpath.join(path, name)) as f:
            q = pq.read_table(f)
        q = q.rename_columns(["id", "reason", "text"]).select(["id", "reason"])
        tables.append(q.filter(pc.is_in(q.column("reason"), value_set=pa.array(targets))))
    if not tables:
        return pa.table({"id": pa.array([], pa.int64()), "reason": pa.array([], pa.string())})
    return pa.concat_tables(tables)


def summary(manifest: dict) -> str:
    """The line `replay-quarantine` prints under embed's summary."""
    r = manifest["replay"]
    by = ", ".join(f"{k}={v}" for k, v in r["recovered_by_reason"].items() if v) or "none"
    still = ", ".join(f"{k}={v}" for k, v in r["still_quarantined"].items() if v) or "none"
    return f"replay       {r['recovered']} recovered of {r['of']} ({by}); still quarantined {still}"
