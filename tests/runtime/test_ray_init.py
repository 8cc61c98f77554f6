"""init_ray hands address resolution to ray.init itself (no Ray is started here)."""

from __future__ import annotations

import pytest

from fashion_batch.runtime import ray as runtime_ray


@pytest.mark.parametrize("address", [None, "local", "auto", "10.0.0.5:6379"])
def test_init_ray_lets_ray_resolve_the_address_and_keeps_the_dashboard_setting(
    monkeypatch, address
):
    """RAY_ADDRESS=local starts a new local Ray without the dashboard (it used to become
    address='auto' with the dashboard on); any address is Ray's to resolve, as `ray.init()`
    documents: the env variable, then a `ray start` cluster on the machine, then a new one."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    if address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    runtime_ray.init_ray()
    runtime_ray.init_ray(include_dashboard=None)
    assert [c["include_dashboard"] for c in calls] == [False, None]
    assert not any("address" in c for c in calls)


def test_release_ray_stops_only_a_ray_the_cli_will_stop_and_shutdown_waits_for_it(monkeypatch):
    """A CLI command's Ray (allow_early_shutdown) begins stopping in a background thread as soon
    as the job releases it, and shutdown_ray waits for that; without the CLI's leave (a
    notebook's or a test session's Ray) release_ray does nothing. No Ray is started here."""
    import threading
    import time

    import ray

    state = {"up": True, "stopped_by": []}

    def fake_shutdown():
        time.sleep(0.2)  # Ray's shutdown is mostly waiting for its processes
        state["stopped_by"].append(threading.current_thread().name)
        state["up"] = False

    monkeypatch.setattr(runtime_ray, "ray_running", lambda: state["up"])
    monkeypatch.setattr(ray, "shutdown", fake_shutdown)

    runtime_ray.release_ray()  # not allowed: the caller's Ray stays up
    assert state["up"] and not state["stopped_by"]

    runtime_ray.allow_early_shutdown()
    runtime_ray.release_ray()
    runtime_ray.release_ray()  # once
    runtime_ray.shutdown_ray()  # waits for the background stop
    assert state["stopped_by"] == ["ray-shutdown"] and not state["up"]

    state["up"] = True  # a later in-process command, on a caller's Ray: not allowed again
    runtime_ray.release_ray()
    assert state["up"] and state["stopped_by"] == ["ray-shutdown"]
