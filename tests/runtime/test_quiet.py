"""runtime.ray's log quieting: Ray's driver logger follows -v, Ray's token-auth notice and
Ray Data's "progress bars disabled" line are dropped and nothing else of theirs is, Ray Data's
console shows INFO only with -v, and the Dataset's own progress bars are off. No Ray is started
here: ray.init is replaced and the filters are given records directly."""

from __future__ import annotations

import logging

import pytest

from fashion_batch.runtime import ray as runtime_ray


@pytest.fixture
def our_level():
    logger = logging.getLogger("fashion_batch")
    before = logger.level

    def set_level(level: int) -> None:
        logger.setLevel(level)

    yield set_level
    logger.setLevel(before)


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


@pytest.mark.parametrize(
    ("ours", "rays"), [(logging.WARNING, logging.WARNING), (logging.INFO, logging.INFO)]
)
def test_rays_driver_logger_follows_ours(monkeypatch, our_level, ours, rays):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    our_level(ours)
    runtime_ray.init_ray()
    assert calls[0]["logging_level"] == rays


def test_only_the_token_auth_on_notice_is_dropped():
    runtime_ray._quiet_token_auth_notice()
    runtime_ray._quiet_token_auth_notice()  # idempotent: one filter
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert logger.filters.count(runtime_ray._not_auth_on_notice) == 1
    on = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled"
    off = "Token authentication is disabled for this Ray cluster. Anyone with network access"
    assert not logger.filter(_record(logger.name, logging.WARNING, on))
    assert logger.filter(_record(logger.name, logging.WARNING, off))


def test_ray_data_console_shows_info_only_when_ours_does(our_level):
    from ray.data import DataContext

    context = DataContext()
    runtime_ray.quiet_ray_data(context)
    runtime_ray.quiet_ray_data(context)
    assert context.enable_progress_bars is False
    consoles = [
        h
        for h in logging.getLogger("ray.data").handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    assert consoles and all(h.filters.count(runtime_ray._below_ours) == 1 for h in consoles)
    finished = _record("ray.data._internal.execution.streaming_executor", logging.INFO, "done")
    warning = _record("ray.data._internal.execution.streaming_executor", logging.WARNING, "w")
    our_level(logging.WARNING)
    assert not consoles[0].filter(finished) and consoles[0].filter(warning)
    our_level(logging.INFO)  # -v
    assert consoles[0].filter(finished)

    progress = logging.getLogger("ray.data._internal.progress")
    disabled = "Progress bars disabled. To enable, set `ray.data.DataContext.get_current()."
    assert not progress.filter(_record(progress.name, logging.WARNING, disabled))
    assert progress.filter(_record(progress.name, logging.WARNING, "Progress bars for operators"))


def test_model_loading_draws_no_bar():
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    try:
        runtime_ray.quiet_model_loading()
        assert are_progress_bars_disabled()
        assert not transformers_logging.is_progress_bar_enabled()
    finally:
        enable_progress_bars()
        transformers_logging.enable_progress_bar()
