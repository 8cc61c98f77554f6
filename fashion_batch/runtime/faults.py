"""Fault injection for the reliability tests (tests/embed/test_faults.py,
tests/cluster/test_multinode.py, tests/sinks/test_embed_sink.py), inert unless set.

The embed job forwards every FASHION_BATCH_FAULT_* variable of the driver to its actors and the
train job to its workers (`forwarded_env`); `unit_hook` runs before each unit an actor embeds:

* `..._TRACE_DIR`: record each unit's node id there (a test waits for work on a node it kills);
* `..._UNIT_DELAY_S`: sleep before each unit (a job slow enough to be killed mid-way);
* `..._HOLD_UNITS_DIR=dir`: every unit waits until `dir/release` exists (after its trace), so a
  test can change the cluster while the pool it has grown so far is known from the trace;
* `..._KILL_AT=k` with `..._MARKER=path`: the actor exits hard on its k-th unit, once in the
  whole job (the marker file, created exclusively first, keeps restarted actors alive);
* `..._VECTOR_NOISE=s`: the actor adds seeded Gaussian noise of `s` times each vector's norm to
  what its encoder returns: a broken backend (a bad int8 graph, an fp16 overflow) whose vectors
  differ from the model's, which embed's parity check must refuse (tests/embed/test_gate.py).

`sink_hook` runs in the embed run's sidecar (embed/sink.py) before a sync loads anything:

* `..._SINK_ERROR=message`: the sync fails with OSError(message), as a full disk would.

`step_hook` runs in every training worker after each step (and the checkpoint it reported):

* `..._HOLD_AT_STEP=k` with `..._HOLD_DIR=dir`: at step k each rank creates `<node id>-rank<r>`
  in dir and waits until `dir/release` exists, so a test can lose a node while the run is known
  to be past that step's checkpoint. A run resumed from that checkpoint starts after step k and
  is not held again.
"""

from __future__ import annotations

import os
import time

import numpy as np

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
    if env.get(PREFIX + "HOLD_UNITS_DIR"):
        _wait_for_release(env[PREFIX + "HOLD_UNITS_DIR"])
    if env.get(PREFIX + "UNIT_DELAY_S"):
        time.sleep(float(env[PREFIX + "UNIT_DELAY_S"]))
    if env.get(PREFIX + "KILL_AT") == str(_units_seen):
        try:
            fd = os.open(env[PREFIX + "MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def sink_hook() -> None:
    """Called in the sidecar before each sync; does nothing unless the variable is set."""
    message = os.environ.get(PREFIX + "SINK_ERROR")
    if message:
        raise OSError(message)


def step_hook(step: int, rank: int) -> None:
    """Called by a training worker after each step; does nothing unless a variable is set."""
    env = os.environ
    if env.get(PREFIX + "HOLD_AT_STEP") != str(step):
        return
    import ray

    hold = env[PREFIX + "HOLD_DIR"]
    node = ray.get_runtime_context().get_node_id()
    open(os.path.join(hold, f"{node}-rank{rank}"), "w").close()
    _wait_for_release(hold)


def _wait_for_release(hold: str) -> None:
    """Wait until the test writes `hold/release` (a file it writes, not a timed wait)."""
    while not os.path.exists(os.path.join(hold, "release")):
        time.sleep(0.1)


def corrupt_vectors(vectors: np.ndarray) -> np.ndarray:
    """What an embedding actor's encoder returned, with `..._VECTOR_NOISE` applied (unchanged
    unless it is set). The noise is drawn from a fixed seed, so a run is reproducible."""
    scale = os.environ.get(PREFIX + "VECTOR_NOISE")
    if not scale:
        return vectors
    rng = np.random.default_rng(0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
    noise = rng.standard_normal(vectors.shape).astype(np.float32)  # (n, D)
    noise /= np.sqrt(vectors.shape[1])  # each noise vector has norm ~1
    return (vectors + float(scale) * norms * noise).astype(np.float32)  # (n, D)
