"""Fault injection for the reliability tests (tests/embed/test_faults.py), inert unless set.

The embed job forwards every FASHION_BATCH_FAULT_* variable of the driver to its actors
(`forwarded_env`); `unit_hook` runs before each unit an actor embeds:

* `..._TRACE_DIR`: record each unit's node id there (a test waits for work on a node it kills);
* `..._UNIT_DELAY_S`: sleep before each unit (a job slow enough to be killed mid-way);
* `..._KILL_AT=k` with `..._MARKER=path`: the actor exits hard on its k-th unit, once in the
  whole job (the marker file, created exclusively first, keeps restarted actors alive).
"""

from __future__ import annotations

import os
import time

PREFIX = "FASHION_BATCH_FAULT_"
_units_seen = 0  # per actor process


def forwarded_env() -> dict[str, str]:
    """The driver's FASHION_BATCH_FAULT_* variables, to be set in the actors."""
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}


def unit_hook() -> None:
    """Called by an embedding actor before each unit; does nothing unless a variable is set."""
    global _units_seen
    env = os.environ
    if not any(k.startswith(PREFIX) for k in env):
        return
    _units_seen += 1
    if env.get(PREFIX + "TRACE_DIR"):
        import ray

        node = ray.get_runtime_context().get_node_id()
        name = f"{node}-{os.getpid()}-{_units_seen}"
        open(os.path.join(env[PREFIX + "TRACE_DIR"], name), "w").close()
    if env.get(PREFIX + "UNIT_DELAY_S"):
        time.sleep(float(env[PREFIX + "UNIT_DELAY_S"]))
    if env.get(PREFIX + "KILL_AT") == str(_units_seen):
        try:
            fd = os.open(env[PREFIX + "MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)
