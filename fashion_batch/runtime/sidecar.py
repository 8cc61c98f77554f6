"""A second Python process that runs a job's calls into a library the driver should not load.

An incremental or `--sink` embed run starts one first (embed/job.py) for its LanceDB sink
(embed/sink.py) and its drift.png (matplotlib). Those imports take seconds of CPU; here they
overlap planning and Ray's start-up, where the driver mostly waits. And lancedb installs an
after-fork hook that warns in every process forked afterwards (Ray starts its own with
`preexec_fn`, which runs such hooks): the driver never has it.

    with Sidecar() as side:
        checked = side.submit(module.function, *args)  # returns at once
        ...                                           # the driver goes on meanwhile
        checked.result()  # the return value, or the function's exception raised here

Calls run one at a time, in the order they were submitted. A function is sent by its module and
qualified name, so it must be a module-level function; arguments and results are pickled. The
process is started with `python -m`, not multiprocessing's spawn, so a caller's unguarded script
is never re-run in it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any


class SidecarError(RuntimeError):
    """The process ended without answering (killed, out of memory, a crash in native code)."""


class RemoteTraceback(Exception):
    """The traceback in the sidecar, as the `__cause__` of the exception raised again here."""


class Pending:
    """A submitted call; `result()` waits for it."""

    def __init__(self, sidecar: Sidecar, name: str):
        self._sidecar, self.name = sidecar, name
        self._reply: tuple[bool, Any, str] | None = None

    def result(self) -> Any:
        """The function's return value, or its exception raised again here."""
        while self._reply is None:
            self._sidecar._receive()
        ok, value, remote = self._reply
        if ok:
            return value
        raise value from RemoteTraceback(remote)


class Sidecar:
    """The process, started at construction; `close()` (or leaving the `with`) ends it."""

    def __init__(self):
        root = str(Path(__file__).resolve().parents[2])  # where fashion_batch is importable from
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self._waiting: deque[Pending] = deque()

    def submit(self, fn: Callable, *args, **kwargs) -> Pending:
        """Send the call and return at once (the request is written to the process's pipe)."""
        pending = Pending(self, f"{fn.__module__}.{fn.__qualname__}")
        try:
            pickle.dump((fn.__module__, fn.__qualname__, args, kwargs), self._proc.stdin)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise self._ended(pending.name) from e
        self._waiting.append(pending)
        return pending

    def close(self) -> None:
        """End the process: it exits when its input closes, after the call it is running; if a
        submitted call's result was never asked for (the job failed before it needed it), at
        once."""
        if self._waiting:
            self._proc.kill()
        if self._proc.stdin and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):  # a process that already died
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _receive(self) -> None:
        pending = self._waiting.popleft()
        try:
            pending._reply = pickle.load(self._proc.stdout)
        except (EOFError, pickle.UnpicklingError, OSError) as e:
            raise self._ended(pending.name) from e

    def _ended(self, name: str) -> SidecarError:
        try:  # its pipe is closed: it is exiting, if it has not yet
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = "stopped answering" if code is None else f"exited with code {code}"
        return SidecarError(f"the process running {name} {how} (its stderr is above)")


def _portable(e: BaseException) -> BaseException:
    """The exception as it can cross the pipe: itself if it pickles, else a RuntimeError that
    names it."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _serve() -> None:
    """Answer calls from stdin on the saved stdout until stdin closes; anything the functions
    print goes to stderr, so it cannot break the replies. Ctrl-C reaches the whole process group:
    the driver handles it and closes this process's input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    while True:
        try:
            module, name, args, kwargs = pickle.load(requests)
        except EOFError:
            return
        try:
            fn = importlib.import_module(module)
            for part in name.split("."):
                fn = getattr(fn, part)
            reply = (True, fn(*args, **kwargs), "")
        except BaseException as e:  # noqa: BLE001 - every failure is the caller's to raise
            remote = "in the sidecar process:\n" + "".join(traceback.format_exception(e))
            reply = (False, _portable(e), remote)
        try:
            data = pickle.dumps(reply)
        except Exception as e:
            error = RuntimeError(f"{module}.{name}: a result that does not pickle: {e}")
            data = pickle.dumps((False, error, ""))
        replies.write(data)
        replies.flush()


if __name__ == "__main__":
    _serve()
