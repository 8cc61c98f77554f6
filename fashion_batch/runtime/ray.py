"""Ray start-up in one place: every job joins or starts Ray through `init_ray`."""

from __future__ import annotations

import os


def init_ray(include_dashboard: bool | None = False) -> None:
    """Join the cluster named by RAY_ADDRESS (`ray job submit` sets it), else start a local one.

    The local one starts without the dashboard by default: with ray[default] installed it costs
    seconds and a process per run, and a one-shot CLI run exits before anyone could look at it (a
    cluster from `ray start --head` has one; point RAY_ADDRESS at it to watch a job). Ray Train
    passes None (Ray's default: the dashboard when `ray[default]` is installed): its
    placement-group cleaner polls the State API the dashboard serves, and an install without
    the dashboard packages must still start.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto")
    else:
        ray.init(include_dashboard=include_dashboard)
