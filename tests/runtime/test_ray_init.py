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
