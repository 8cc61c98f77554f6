"""Run state under OUTPUT/_state: what makes a killed run resumable and its output trustworthy.

    OUTPUT/_state/run.json                     the run's fingerprint, written before any file
    OUTPUT/_state/done/unit-NNNNN.json         commit record of one unit, written after its files
    OUTPUT/_staging/hashes/unit-NNNNN.parquet  id + content_hash of a unit's embedded rows, in its
                                               staged file's row order
    OUTPUT/_state/hashes/part-NNNNN.parquet    the same for a published part (what `--previous`
                                               reads), written when the run publishes
    OUTPUT/_state/publish.json                 while publishing: the old snapshot's files and the
                                               new parts (so both stay ours if publishing dies)

Why a per-unit commit log and not Ray Data's checkpointing: a unit (a fixed row range of the
input) is the natural unit of resume: its files are written under temporary names into
`_staging/` and moved into place, then its commit record is written. A unit with a commit record
is finished; one without is redone from scratch (its files, if any, are overwritten with the same
bytes). Publishing (publish.py) then copies the staged units into the parts readers see, and the
manifest comes last. A row is therefore never in two part files and never lost, whatever point
the driver or a worker was killed at.

Why a fingerprint: a commit record only means something for the run that wrote it. The fingerprint
pins everything that decides which rows go into which part and what their embeddings are: the
input files (path, size, mtime, inode, Parquet footer hash), the model digest, the `--previous`
output, and every EmbedConfig field that embed/config.py does not list as scheduling-only
(model, id column, text template, rows per unit, part size, normalize, precision, backend,
limit, ...). Re-running with the same fingerprint resumes; with another one, the unfinished run is
refused (exit 2) unless `--overwrite` says to discard it. Scheduling knobs (batch size, actor
counts, threads) are not in it: they change embeddings only by float noise, never which rows go
where.

`_state/` and `_staging/` start with an underscore, so readers that list OUTPUT (pyarrow
datasets, Spark, a `part-*.parquet` glob) skip them.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.layout import MANIFEST, QUARANTINE_DIR, STAGING_DIR
from fashion_batch.errors import InputError
from fashion_batch.io.atomic import is_temporary, read_json, write_atomic, write_json_atomic

STATE_DIR = "_state"
FINGERPRINT = "run.json"
DONE_DIR = "done"
HASHES_DIR = "hashes"
PUBLISHING = "publish.json"
STAGED = (STAGING_DIR, posixpath.join(STAGING_DIR, QUARANTINE_DIR))  # where staged units lie
PUBLISHED = ("", QUARANTINE_DIR)  # where published parts lie
TMP_MARK = ".tmp-"  # write_atomic's temporary names contain it


def fingerprint(
    fs: pafs.FileSystem,
    files: list[str],
    model_sha256: str,
    settings: dict,
    previous: dict | None = None,
) -> dict:
    """The identity of a run: input files, model digest and the settings that decide the
    output's content. `digest` is a sha256 over the rest.

    An input file is identified by path, size, mtime, inode (local files) and a sha256 of its
    Parquet footer: the footer holds every row group's size, offsets and column statistics, so a
    file rewritten in place with other rows almost surely gets another footer, while reading it
    costs one small range read per file (S3 included), not a read of the data.
    """
    infos = fs.get_file_info(files)
    fp = {
        "version": 3,
        "input_files": [_file_identity(fs, i) for i in infos],
        "model_sha256": model_sha256,
        "settings": settings,
        "previous": previous,
    }
    fp["digest"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
    return fp


def _file_identity(fs: pafs.FileSystem, info: pafs.FileInfo) -> dict:
    identity = {"path": info.path, "size": info.size, "mtime_ns": info.mtime_ns}
    if isinstance(fs, pafs.LocalFileSystem):
        identity["inode"] = os.stat(info.path).st_ino
    with fs.open_input_file(info.path) as f:
        f.seek(max(0, info.size - 8))
        tail = f.read(8)  # footer length (4 bytes, little-endian) + "PAR1"
        length = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
        f.seek(max(0, info.size - 8 - length))
        identity["footer_sha256"] = hashlib.sha256(f.read(length + 8)).hexdigest()
    return identity


def _differences(old: dict, new: dict) -> list[str]:
    keys = ("input_files", "model_sha256", "previous")
    out = [k for k in keys if old.get(k) != new.get(k)]
    old_s, new_s = old.get("settings", {}), new.get("settings", {})
    out += [f"{k}" for k in sorted(set(old_s) | set(new_s)) if old_s.get(k) != new_s.get(k)]
    return out or ["version"]


class RunState:
    """Reads and writes OUTPUT/_state (and tidies OUTPUT) for one run.

    Args:
        fs, output: the output filesystem and path.
    """

    def __init__(self, fs: pafs.FileSystem, output: str):
        self.fs = fs
        self.output = output
        self.dir = posixpath.join(output, STATE_DIR)

    # -------------------------------------------------------------------- paths
    def done_path(self, name: str) -> str:
        """The commit record of the unit whose staged file is `name` (OUTPUT-relative)."""
        return posixpath.join(
            self.dir, DONE_DIR, posixpath.basename(name).replace(".parquet", ".json")
        )

    def hashes_path(self, name: str) -> str:
        """The content-hash sidecar of a staged unit file or of a published part (OUTPUT-relative
        name): _staging/hashes/unit-NNNNN.parquet or _state/hashes/part-NNNNN.parquet."""
        base = posixpath.basename(name)
        if name.startswith(STAGING_DIR + "/"):
            return posixpath.join(self.output, STAGING_DIR, HASHES_DIR, base)
        return posixpath.join(self.dir, HASHES_DIR, base)

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _list(self, sub: str) -> list[pafs.FileInfo]:
        path = posixpath.join(self.output, sub) if sub else self.output
        if self.fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        return [i for i in self.fs.get_file_info(pafs.FileSelector(path)) if i.is_file]

    def _parts(self, subs: tuple[str, ...] = PUBLISHED + STAGED) -> list[str]:
        """Every part or staged unit file present under `subs`, relative to OUTPUT."""
        out = []
        for sub in subs:
            for i in self._list(sub):
                name = posixpath.basename(i.path)
                if name.startswith(("part-", "unit-")) and name.endswith(".parquet"):
                    out.append(posixpath.join(sub, name) if sub else name)
        return out

    # -------------------------------------------------------------------- decisions
    def start(self, fp: dict, overwrite: bool, replace_finished: bool = False) -> dict[int, dict]:
        """Make OUTPUT ready for the run with fingerprint `fp`; return the finished units' stats.

        `replace_finished`: OUTPUT is a finished output that `--overwrite` replaces. It stays the
        one readers see until the new run publishes (a refused gate leaves it untouched): only
        the run state of another fingerprint is discarded; the same one resumes.
        Otherwise: same fingerprint: resume, keeping the committed units. Different (or no)
        fingerprint over files of ours: refuse with exit 2 unless `overwrite`, then discard them.
        Nothing of ours: start fresh.
        """
        if replace_finished:
            stored = self.read_fingerprint()
            same = stored is not None and stored.get("digest") == fp["digest"]
            action = "resume" if same else "reset"
        else:
            action = self.check(fp, overwrite)
        if action == "resume":
            self.remove_temporaries()
            return self.finished_units(fp["digest"])
        if action == "reset":
            self.clear(keep_snapshot=True)
        if action == "discard":
            self.clear()
        write_json_atomic(self.fs, fp, posixpath.join(self.dir, FINGERPRINT))
        return {}

    def check(self, fp: dict, overwrite: bool) -> str:
        """resume | discard | fresh, reading only; raise InputError (exit 2) when OUTPUT holds
        files of another run and `overwrite` is not given, or holds files that no record of
        ours lists (never deleted, not even with `overwrite`). Called before the run starts Ray.
        """
        stored = self.read_fingerprint()
        if stored is not None and stored.get("digest") == fp["digest"]:
            return "resume"
        ours = stored is not None or self._exists(self.dir) or self._manifest() is not None
        if not ours:
            foreign = self._entries()
            if not foreign:
                return "fresh"
            raise InputError(
                f"--output {self.output} holds files of an unknown run, not written by "
                f"fashion-batch ({', '.join(foreign[:5])}); it writes only into an empty "
                "directory or its own output, and --overwrite never deletes files it did not write"
            )
        if overwrite:
            return "discard"
        what = (
            "an unfinished run with other settings or input (differs in: "
            + ", ".join(_differences(stored, fp))
            + ")"
            if stored is not None
            else "files of an unknown run"
        )
        raise InputError(
            f"--output {self.output} holds {what}; re-run that run's command to finish "
            "it, or pass --overwrite to discard it"
        )

    def another_job(self, fp: dict) -> str:
        """The refusal of a finished OUTPUT that another job (other input or settings) wrote."""
        stored = self.read_fingerprint()
        differs = ", ".join(_differences(stored, fp)) if stored else "unknown"
        return (
            f"--output {self.output} holds a finished run of another job (differs in: "
            f"{differs}); use another --output, or --overwrite to replace it"
        )

    def _entries(self) -> list[str]:
        """Names directly in OUTPUT (files and folders), if it is a directory."""
        if self.fs.get_file_info(self.output).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.output))
        return sorted(posixpath.basename(i.path) for i in infos)

    def _manifest(self) -> dict | None:
        return read_json(self.fs, posixpath.join(self.output, MANIFEST))

    def owned_files(self) -> set[str]:
        """The OUTPUT-relative files this project's own records list: the manifest's files,
        every commit record's and a publishing record's. Only these are ever deleted."""
        manifest = self._manifest() or {}
        owned = set(manifest.get("files", []))
        publishing = self.publishing()
        owned.update(publishing["old"] + publishing["new"])
        for info in self._list(posixpath.join(STATE_DIR, DONE_DIR)):
            if info.path.endswith(".json") and TMP_MARK not in info.path:
                owned.update(read_json(self.fs, info.path).get("files", []))
        return owned

    def read_fingerprint(self) -> dict | None:
        path = posixpath.join(self.dir, FINGERPRINT)
        if not self._exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def finished_units(self, run_id: str) -> dict[int, dict]:
        """{unit index: stats} of the committed units of run `run_id` whose files are all
        present (a record another run left is never trusted)."""
        present = set(self._parts(STAGED))
        out = {}
        for info in self._list(posixpath.join(STATE_DIR, DONE_DIR)):
            if not info.path.endswith(".json") or TMP_MARK in info.path:
                continue
            with self.fs.open_input_stream(info.path) as f:
                stats = json.loads(f.read().decode())
            hashes = self.hashes_path(stats["files"][0])
            if stats.get("run") != run_id:
                continue
            if set(stats["files"]) <= present and self._exists(hashes):
                out[stats["unit"]] = stats
        return out

    def commit(self, stats: dict) -> None:
        """Record a unit as finished: called after all its files are in place."""
        path = self.done_path(stats["files"][0])
        write_json_atomic(self.fs, stats, path)

    def write_hashes(self, name: str, ids: pa.Array, hashes: pa.Array) -> None:
        table = pa.table({"id": ids, "content_hash": hashes})
        write_atomic(self.fs, table, self.hashes_path(name))

    # -------------------------------------------------------------------- publishing
    def publishing(self) -> dict:
        """The publishing record: {"old": files of the snapshot being replaced, "new": parts
        being written}; both empty when no publish is under way."""
        record = read_json(self.fs, posixpath.join(self.dir, PUBLISHING)) or {}
        return {"old": record.get("old", []), "new": record.get("new", [])}

    def begin_publish(self, new: list[str]) -> list[str]:
        """Record what publishing replaces and writes, then withdraw the old manifest, so no
        reader trusts a half-replaced snapshot. Returns the old snapshot's files (those of a
        publish that died before its manifest included)."""
        record = self.publishing()
        old = sorted(set(record["old"] + record["new"] + (self._manifest() or {}).get("files", [])))
        write_json_atomic(self.fs, {"old": old, "new": new}, posixpath.join(self.dir, PUBLISHING))
        manifest = posixpath.join(self.output, MANIFEST)
        if self._exists(manifest):
            self.fs.delete_file(manifest)
        return old

    def drop_replaced(self, old: list[str], new: list[str]) -> None:
        """Delete the old snapshot's files (and part hashes) that the new parts did not replace."""
        present = set(self._parts(PUBLISHED))
        for rel in sorted(set(old) - set(new)):
            if rel in present:
                self.fs.delete_file(posixpath.join(self.output, rel))
            hashes = self.hashes_path(rel)
            if not rel.startswith(QUARANTINE_DIR + "/") and self._exists(hashes):
                self.fs.delete_file(hashes)

    def end_publish(self) -> None:
        """After the manifest: drop the staged units, their commit records and the publishing
        record (the manifest is now what resume and readers trust)."""
        staged = self.owned_files() & set(self._parts(STAGED))
        for rel in sorted(staged):
            self.fs.delete_file(posixpath.join(self.output, rel))
            hashes = self.hashes_path(rel)
            if not rel.startswith(posixpath.join(STAGING_DIR, QUARANTINE_DIR)) and self._exists(
                hashes
            ):
                self.fs.delete_file(hashes)
        for rel in (DONE_DIR, PUBLISHING):
            path = posixpath.join(self.dir, rel)
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(path)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(path)

    # -------------------------------------------------------------------- tidying
    def remove_temporaries(self) -> None:
        """Delete the temporary files a killed run of ours left behind (never read, but untidy);
        only names of the form io.atomic writes (`.NAME.tmp-XXXXXXXX`)."""
        subs = PUBLISHED + STAGED + (posixpath.join(STAGING_DIR, HASHES_DIR), STATE_DIR)
        subs += tuple(posixpath.join(STATE_DIR, d) for d in (DONE_DIR, HASHES_DIR))
        for sub in subs:
            for info in self._list(sub):
                if is_temporary(posixpath.basename(info.path)):
                    self.fs.delete_file(info.path)

    def clear(self, keep_snapshot: bool = False) -> None:
        """Discard an earlier run of ours: manifest first (so no reader trusts a half-deleted
        output), then the fingerprint and the commit records (so no later run trusts a file
        that is about to go), then the files those records listed, and no other file.

        `keep_snapshot`: discard only the unpublished run (its fingerprint, commit records and
        staged units); the finished output (manifest, parts, their hashes) stays as it is."""
        if keep_snapshot:
            staged = self.owned_files() & set(self._parts(STAGED))
            fp = posixpath.join(self.dir, FINGERPRINT)
            if self._exists(fp):
                self.fs.delete_file(fp)
            done = posixpath.join(self.dir, DONE_DIR)
            if self._exists(done):
                self.fs.delete_dir(done)
            for rel in sorted(staged):
                self.fs.delete_file(posixpath.join(self.output, rel))
            self.remove_temporaries()
            return
        owned = self.owned_files()
        for rel in (MANIFEST, posixpath.join(STATE_DIR, FINGERPRINT)):
            path = posixpath.join(self.output, rel)
            if self._exists(path):
                self.fs.delete_file(path)
        if self._exists(self.dir):
            self.fs.delete_dir_contents(self.dir)
        for rel in sorted(owned & set(self._parts())):
            self.fs.delete_file(posixpath.join(self.output, rel))
            hashes = self.hashes_path(rel)
            if rel.startswith(STAGING_DIR + "/") and self._exists(hashes):
                self.fs.delete_file(hashes)
        self.remove_temporaries()


def read_hashes(fs: pafs.FileSystem, output: str, name: str) -> pa.Table:
    """The (id, content_hash) sidecar of one published part or staged unit file."""
    with fs.open_input_file(RunState(fs, output).hashes_path(name)) as f:
        return pq.read_table(f)
