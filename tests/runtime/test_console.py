"""The console entry (`fashion-batch`, `python -m fashion_batch`) ends the process with
os._exit after main(): its output must still arrive whole through a pipe, where stdout is
block-buffered, and its exit code must be main()'s."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stdout


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered stdout
    cmd = [sys.executable, "-m", "fashion_batch", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_output_is_flushed_and_the_exit_code_kept(tmp_path):
    from fashion_batch.cli import main

    flags = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    done = _run("embed", *flags, "--print-config")
    assert done.returncode == 0, done.stderr
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["embed", *flags, "--print-config"]) == 0
    assert done.stdout == printed.getvalue()  # all of it, not a buffer's first part

    refused = _run("report", str(tmp_path / "nowhere"))
    assert refused.returncode == 2
    assert "no manifest.json" in refused.stderr and "Traceback" not in refused.stderr
    assert main(["report", str(tmp_path / "nowhere")]) == 2  # what main() returns, in process
