"""Ray start-up, shut-down and log quieting in one place: every job joins or starts Ray through
`init_ray`; the CLI stops it (`shutdown_ray`), and lets the embed job begin that as soon as its
pipeline is over (`allow_early_shutdown`, `release_ray`); the embed job quiets its Dataset with
`quiet_ray_data` and its actors with `quiet_model_loading`."""

from __future__ import annotations

import logging


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

    Ray's driver logger shows INFO ("Started a local Ray instance", "Connected to Ray cluster")
    only when this project's logging does (`-v`); Ray's notice that token authentication is on
    is dropped (`_quiet_token_auth_notice` says why).
    """
    import ray

    if ray.is_initialized():
        return
    _quiet_token_auth_notice()
    ray.init(include_dashboard=include_dashboard, logging_level=_ray_level())


def ray_running() -> bool:
    """Whether this process is connected to Ray (without importing Ray when it is not loaded)."""
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


# Ray's shutdown is mostly waiting (the raylet gets a second to stop its workers, then each other
# process); a CLI command lets its job start it in the background once the job's last use of Ray
# is over, so the wait overlaps the job's last steps (the quality gate, publishing the parts).
_early = {"allowed": False, "thread": None}


def allow_early_shutdown() -> None:
    """The CLI: the Ray this command starts or joins is stopped when the command ends anyway, so
    a job may begin stopping it as soon as it needs it no more (`release_ray`)."""
    _early["allowed"] = True


def release_ray() -> None:
    """A job's last use of Ray is over: begin stopping it in a background thread, if
    `allow_early_shutdown` was called; otherwise (a notebook's, a test session's or an API
    caller's Ray) leave it running. `shutdown_ray` waits for the thread."""
    if not _early["allowed"] or _early["thread"] is not None or not ray_running():
        return
    import threading

    import ray

    _early["thread"] = threading.Thread(target=ray.shutdown, name="ray-shutdown")
    _early["thread"].start()


def shutdown_ray() -> None:
    """Stop the Ray this process started (or leave the cluster it joined) now, or wait for the
    stop `release_ray` began. Ray's own atexit hook does the same but first sleeps half a second
    so that late log lines can print; a CLI command calls this once it has printed its result,
    when nothing is left to print."""
    thread = _early["thread"]
    _early.update(allowed=False, thread=None)  # the next command (in-process) decides again
    if thread is not None:
        thread.join()
    if ray_running():
        import ray

        ray.shutdown()


def _ray_level() -> int:
    """INFO for Ray's driver logger when this project's logging shows INFO, else WARNING."""
    ours = logging.getLogger("fashion_batch").getEffectiveLevel()
    return logging.INFO if ours <= logging.INFO else logging.WARNING


def _quiet_token_auth_notice() -> None:
    """Drop Ray's WARNING that token authentication is on, printed on every run that starts a
    local Ray (or finds one on this machine) while RAY_AUTH_MODE is unset.

    Harmless: it announces Ray's own default (a token in ~/.ray/auth_token guards the cluster)
    and how to opt out. Choosing the mode instead (RAY_AUTH_MODE=token) does not work from here:
    Ray reads the variable into its C++ config when it is imported, which may be before this
    runs, and a driver whose config still says 'disabled' cannot talk to the token-protected GCS
    it just started. The logger's other messages (auth disabled, a token missing) still show.
    """
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if _not_auth_on_notice not in notice.filters:
        notice.addFilter(_not_auth_on_notice)


def _not_auth_on_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray")


def quiet_ray_data(context) -> None:
    """Make a Dataset's execution show nothing on the console but warnings and errors.

    The embed job reports its own progress in listings (runtime.progress); Ray Data's would be a
    second one, counting units, and off a TTY a multi-line text dump every few seconds. So its
    progress bars are off for this dataset (`context` is the Dataset's own DataContext), and its
    console handler passes INFO (execution plan, "execution finished") only when this project's
    logging shows INFO (`-v`). Everything still goes to Ray Data's log file in the session's
    logs directory.
    """
    context.enable_progress_bars = False
    import ray.data  # noqa: F401 - configures the "ray.data" logger and its console handler

    data_logger = logging.getLogger("ray.data")
    for handler in data_logger.handlers:
        if (
            isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
            and _below_ours not in handler.filters  # a second run in this process adds none
        ):
            handler.addFilter(_below_ours)
    progress_logger = logging.getLogger("ray.data._internal.progress")
    if _not_bars_off not in progress_logger.filters:
        progress_logger.addFilter(_not_bars_off)


def _below_ours(record: logging.LogRecord) -> bool:
    """Pass a Ray Data console record only at a level this project's logging shows."""
    return record.levelno >= logging.getLogger("fashion_batch").getEffectiveLevel()


def _not_bars_off(record: logging.LogRecord) -> bool:
    """Drop Ray Data's one WARNING that its progress bars are disabled: harmless, because the
    job disabled them on purpose and shows its own (runtime.progress); it says how to turn them
    back on, which is not what the reader of a job's log needs."""
    return not record.getMessage().startswith("Progress bars disabled")


def quiet_train_worker() -> None:
    """A Ray Train worker's console: its own progress lines (train/record.py) and warnings only.

    Ray Train runs workers with INFO logging, which lets through every library's INFO records:
    sentence-transformers' "Loading SentenceTransformer model" / "No device provided", and, while
    the model card's dataset statistics are computed, `datasets`' dill pickling trace (a
    bytecode listing). None of it tells the user anything the driver's summary does not."""
    import logging
    import warnings

    quiet_model_loading()
    for name in ("sentence_transformers", "datasets", "dill", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # accelerate's own DDP wrapper passes torch a deprecated argument: nothing a user can change
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)


def quiet_model_loading() -> None:
    """No model-loading progress bars in this process (an embedding actor).

    Each actor loads the model, and transformers draws a "Loading weights" bar for it: with N
    actors, N bars interleaved in the driver's console, saying nothing the driver's one line about
    the model does not (embed.job). Turned off through huggingface_hub's switch, which
    transformers reads when it is first imported (an ONNX actor may never import it), and
    through transformers' own when it is already loaded.
    """
    import sys

    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
