"""Run state under OUTPUT/_state: what makes a killed run resumable and its output trustworthy.

    OUTPUT/_state/run.json                    the run's fingerprint, written before any part file
    OUTPUT/_state/done/part-NNNNN.json        commit record of one unit, written after its files
    OUTPUT/_state/hashes/part-NNNNN.parquet   id + content_hash of the unit's embedded rows, in the
                                              part file's row order (what `--previous` reads)

Why a per-unit commit log and not Ray Data's checkpointing: the output contract is one part file
per planned unit (plus its quarantine part) and a manifest, and a unit is the natural unit of
resume: its files are written under temporary names and moved into place, then its commit record
is written. A unit with a commit record is finished; one without is redone from scratch (its files,
if any, are overwritten with the same bytes). A row is therefore never in two part files and never
lost, whatever point the driver or a worker was killed at.

Why a fingerprint: a commit record only means something for the run that wrote it. The fingerprint
pins everything that decides which rows go into which part and what their embeddings are: the
input files (path, size, mtime, inode, Parquet footer hash), the model digest, the `--previous`
output, and every EmbedConfig field that embed/config.py does not list as scheduling-only
(model, id column, text template, rows per part, normalize, precision, backend, limit, ...).
Re-running with the same
fingerprint resumes; with another one, the unfinished output is refused (exit 2) unless
`--overwrite` says to discard it. Scheduling knobs (batch size, actor counts, threads) are not in
it: they change embeddings only by float noise, never which rows go where.

`_state/` starts with an underscore, so readers that list OUTPUT (pyarrow datasets, Spark, a
`part-*.parquet` glob) skip it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fashion_batch.embed.layout import MANIFEST, QUARANTINE_DIR
from fashion_batch.errors import InputError
from fashion_batch.io.atomic import is_temporary, read_json, write_atomic, write_json_atomic

STATE_DIR = "_state"
FINGERPRINT = "run.json"
DONE_DIR = "done"
HASHES_DIR = "hashes"
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
        "version": 2,
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
        return posixpath.join(self.dir, DONE_DIR, name.replace(".parquet", ".json"))

    def hashes_path(self, name: str) -> str:
        return posixpath.join(self.dir, HASHES_DIR, name)

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _list(self, sub: str) -> list[pafs.FileInfo]:
        path = posixpath.join(self.output, sub) if sub else self.output
        if self.fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        return [i for i in self.fs.get_file_info(pafs.FileSelector(path)) if i.is_file]

    def _parts(self) -> list[str]:
        """Every part file (output and quarantine) present, relative to OUTPUT."""
        out = []
        for sub in ("", QUARANTINE_DIR):
            for i in self._list(sub):
                name = posixpath.basename(i.path)
                if name.startswith("part-") and name.endswith(".parquet"):
                    out.append(posixpath.join(sub, name) if sub else name)
        return out

    # -------------------------------------------------------------------- decisions
    def start(self, fp: dict, overwrite: bool, replace_finished: bool = False) -> dict[int, dict]:
        """Make OUTPUT ready for the run with fingerprint `fp`; return the finished units' stats.

        `replace_finished`: OUTPUT is a finished output that `--overwrite` replaces: discard it.
        Otherwise: same fingerprint: resume, keeping the committed units. Different (or no)
        fingerprint over files of ours: refuse with exit 2 unless `overwrite`, then discard them.
        Nothing of ours: start fresh.
        """
        action = "discard" if replace_finished else self.check(fp, overwrite)
        if action == "resume":
            self.remove_temporaries()
            return self.finished_units(fp["digest"])
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
        """The OUTPUT-relative files this project's own records list: the manifest's files and
        every commit record's. Only these are ever deleted."""
        manifest = self._manifest() or {}
        owned = set(manifest.get("files", []))
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
        present = set(self._parts())
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

    # -------------------------------------------------------------------- tidying
    def remove_temporaries(self) -> None:
        """Delete the temporary files a killed run of ours left behind (never read, but untidy);
        only names of the form io.atomic writes (`.NAME.tmp-XXXXXXXX`)."""
        subs = ("", QUARANTINE_DIR, STATE_DIR)
        subs += tuple(posixpath.join(STATE_DIR, d) for d in (DONE_DIR, HASHES_DIR))
        for sub in subs:
            for info in self._list(sub):
                if is_temporary(posixpath.basename(info.path)):
                    self.fs.delete_file(info.path)

    def clear(self) -> None:
        """Discard an earlier run of ours: manifest first (so no reader trusts a half-deleted
        output), then the fingerprint and the commit records (so no later run trusts a part file
        that is about to go), then the files those records listed, and no other file."""
        owned = self.owned_files()
        for rel in (MANIFEST, posixpath.join(STATE_DIR, FINGERPRINT)):
            path = posixpath.join(self.output, rel)
            if self._exists(path):
                self.fs.delete_file(path)
        if self._exists(self.dir):
            self.fs.delete_dir_contents(self.dir)
        for rel in sorted(owned & set(self._parts())):
            self.fs.delete_file(posixpath.join(self.output, rel))
        self.remove_temporaries()


def read_hashes(fs: pafs.FileSystem, output: str, name: str) -> pa.Table:
    """The (id, content_hash) sidecar of one part file."""
    path = posixpath.join(output, STATE_DIR, HASHES_DIR, name)
    with fs.open_input_file(path) as f:
        return pq.read_table(f)
