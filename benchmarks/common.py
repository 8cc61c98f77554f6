"""Helpers every side-by-side benchmark shares: timing a child process with the peak memory of
its whole process tree, reading outputs back, comparing vectors, and naming the machine."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import threading
import time
from pathlib import Path

# Every child process runs offline (no model hub here), unbuffered (its log is read live), and on
# a Ray of its own (RAY_ADDRESS=local): never a `ray start` cluster found on the machine.
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "RAY_ADDRESS": "local",
}


class PeakRSS(threading.Thread):
    """Max over time of the summed RSS, and of the summed PSS, of a process and its descendants.

    Summed RSS counts a shared page once per process that touched it: Ray's object store is one
    shared mapping that every worker reads blocks from, so the RSS sum grows with how much of
    the store the processes have touched, up to the store's size, and overstates memory use. PSS
    splits each shared page among the processes sharing it, so the PSS sum is what the tree
    really holds (Linux only; 0 where /proc has no smaps_rollup). Reading PSS costs noticeable
    kernel time, so it is only sampled when asked, once a second: a memory benchmark asks, a
    throughput benchmark does not (it would slow what it times)."""

    def __init__(self, pid: int, interval: float = 0.25, pss: bool = False):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss = pid, interval, pss
        self.peak, self.peak_procs, self.peak_pss = 0, 0, 0
        self.root_peak = 0  # the process itself (a job's driver), without its descendants
        self._done = threading.Event()

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        tick = 0
        while not self._done.is_set():
            total, pss, n = 0, 0, 0
            with_pss = self.pss and tick % max(1, round(1 / self.interval)) == 0
            tick += 1
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    total += rss
                    if p is root:
                        self.root_peak = max(self.root_peak, rss)
                    if with_pss:
                        pss += getattr(p.memory_full_info(), "pss", 0)
                    n += 1
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.peak_procs = total, n
            self.peak_pss = max(self.peak_pss, pss)
            self._done.wait(self.interval)

    def stop(self):
        self._done.set()
        self.join()


def timed(cmd: list[str], log: Path, pss: bool = False, extra_env: dict | None = None) -> dict:
    env = os.environ | ENV | (extra_env or {})
    t0, unix0 = time.perf_counter(), time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        rss = PeakRSS(proc.pid, pss=pss)
        rss.start()
        rc = proc.wait()
    wall, unix1 = time.perf_counter() - t0, time.time()
    rss.stop()
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{shlex.join(cmd)} exited {rc}; log {log}:\n{tail}")
    return {
        "seconds": wall,
        "spawned_unix": unix0,  # with a run's own marks: interpreter start-up and shut-down
        "exited_unix": unix1,
        "peak_rss_mb": rss.peak / 2**20,
        "peak_pss_mb": rss.peak_pss / 2**20,
        "peak_root_rss_mb": rss.root_peak / 2**20,
        "processes_at_peak": rss.peak_procs,
    }


def read_output(output: Path):
    """{id: vector} of an output dir's top-level Parquet files (the job's parts, or whatever names
    Ray Data or Daft gave theirs); the first occurrence of an id wins (files and rows in order), as
    in the job, which quarantines later duplicates."""
    import numpy as np
    import pyarrow.parquet as pq

    out = {}
    for p in sorted(output.glob("[!._]*.parquet")):
        t = pq.read_table(p, columns=["listing_id", "embedding"])
        vecs = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
        for key, vec in zip(t.column("listing_id").to_pylist(), vecs, strict=True):
            out.setdefault(key, vec)
    return out


def cosine_to(reference: dict, other: dict) -> dict:
    import numpy as np

    common = sorted(set(reference) & set(other))
    a = np.stack([reference[k] for k in common])
    b = np.stack([other[k] for k in common])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"rows": len(common), "min": float(cos.min()), "mean": float(cos.mean())}


def count_rows(catalog: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in Path(catalog).glob("*.parquet"))


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    for line in info:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in info:  # int8 speed and accuracy depend on these: encoders/int8.py
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
            cpu += f" ({' '.join(isa) or 'no AVX2'})"
            break
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()[0]
    return f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, load avg {load:.1f} at start"


# ------------------------------------------------------------------------------- modes
