"""runtime/sidecar.py: calls run in the second process in order, results and exceptions come
back, what a function prints cannot break the replies, and a process that dies is a
SidecarError naming the call, never a hang."""

from __future__ import annotations

import os

import pytest

from fashion_batch.errors import InputError
from fashion_batch.runtime.sidecar import Sidecar, SidecarError


def pid_and(value):
    print("noise on stdout")  # goes to stderr in the sidecar: the reply still reads
    return os.getpid(), value


def refuse(name: str):
    raise InputError(f"--sink-table {name!r}: not ours")


def unpicklable():
    return lambda: None


def die():
    os._exit(7)


def test_calls_run_in_another_process_in_order():
    with Sidecar() as side:
        first = side.submit(pid_and, {"a": [1, 2]})
        second = side.submit(pid_and, "two")
        assert second.result()[1] == "two"  # waiting for the second reads the first's reply too
        pid, value = first.result()
    assert pid != os.getpid() and value == {"a": [1, 2]}


def test_exceptions_come_back_with_their_type_and_the_remote_traceback():
    with Sidecar() as side:
        with pytest.raises(InputError, match="'theirs': not ours") as caught:
            side.submit(refuse, "theirs").result()
        assert "in the sidecar process" in str(caught.value.__cause__)
        assert "in refuse" in str(caught.value.__cause__)
        with pytest.raises(RuntimeError, match="does not pickle"):
            side.submit(unpicklable).result()
        assert side.submit(pid_and, 3).result()[1] == 3  # still serving


def test_a_process_that_dies_is_an_error_naming_the_call():
    with Sidecar() as side:
        with pytest.raises(SidecarError, match="test_sidecar.die exited with code 7"):
            side.submit(die).result()
        with pytest.raises(SidecarError):
            side.submit(pid_and, 1).result()


def slow():
    import time

    time.sleep(60)


def test_closing_with_an_unread_call_does_not_wait_for_it():
    """A job that fails before it needs a submitted call's result (exit 2 on bad input while the
    sidecar still imports) ends the process at once instead of waiting for the call."""
    import signal

    side = Sidecar()
    side.submit(slow)
    side.close()
    assert side._proc.returncode == -signal.SIGKILL  # killed, not finished
