"""Ray start-up in one place: every job joins or starts Ray through `init_ray`."""

from __future__ import annotations


def init_ray(include_dashboard: bool | None = False) -> None:
    """Join or start Ray exactly as `ray.init()` resolves it: the cluster RAY_ADDRESS names
    (`ray job submit` sets it; `RAY_ADDRESS=local` forces a new local one), else the cluster
    `ray start` runs on this machine (a cluster's head node), else a new local one.

    A new local one starts without the dashboard by default: with ray[default] installed it costs
    seconds and a process per run, and a one-shot CLI run exits before anyone could look at it (a
    cluster from `ray start --head` has one; point RAY_ADDRESS at it to watch a job). Ray Train
    passes None (Ray's default: the dashboard when `ray[default]` is installed): its
    placement-group cleaner polls the State API the dashboard serves, and an install without
    the dashboard packages must still start. Joining a cluster ignores the setting.
    """
    import ray

    if ray.is_initialized():
        return
    ray.init(include_dashboard=include_dashboard)
