"""`fashion-batch` command line: each command's flags are built from its config dataclass
(fashion_batch.options); a command builds its config (flags over `--config FILE`) and calls its
job's `run`. `--print-config` prints that config as TOML instead of running.

Exit codes (design.md): 0 success, 2 bad arguments or input, 3 a quality gate refused to publish,
1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from fashion_batch import __version__
from fashion_batch.config_file import dumps
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.embed.replay import ReplayConfig
from fashion_batch.errors import GateError, UserError
from fashion_batch.evaluate.drift_job import DriftConfig
from fashion_batch.evaluate.job import EvaluateConfig
from fashion_batch.io.fs import redact_text
from fashion_batch.options import add_arguments, from_args
from fashion_batch.report import ReportConfig
from fashion_batch.runtime.progress import log as progress_log
from fashion_batch.runtime.ray import allow_early_shutdown, ray_running, shutdown_ray
from fashion_batch.sample_data.job import SampleDataConfig
from fashion_batch.search import SearchConfig
from fashion_batch.train.config import TrainConfig

# Each command builds its config before importing its job: a bad flag or --config file is exit 2
# even where the job's modules cannot load.


def _embed(args: argparse.Namespace) -> None:
    argv = [redact_text(a) for a in sys.argv[1:]]
    config = from_args(EmbedConfig, args, extra={"argv": argv})
    from fashion_batch.embed import run, summary

    print(summary(run(config)))


def _replay(args: argparse.Namespace) -> None:
    argv = [redact_text(a) for a in sys.argv[1:]]
    config = from_args(ReplayConfig, args, extra={"argv": argv})
    from fashion_batch.embed import replay, summary

    manifest = replay.run(config)
    print(summary(manifest) + "\n" + replay.summary(manifest))


def _train(args: argparse.Namespace) -> None:
    config = from_args(TrainConfig, args)
    from fashion_batch.train import run

    run(config)  # prints its own summary


def _evaluate(args: argparse.Namespace) -> None:
    config = from_args(EvaluateConfig, args)
    from fashion_batch.evaluate import run, summary

    metrics = run(config)
    print(json.dumps(metrics, indent=2) if config.as_json else summary(metrics))


def _sample_data(args: argparse.Namespace) -> None:
    config = from_args(SampleDataConfig, args)
    from fashion_batch.sample_data import run

    print(json.dumps(run(config), indent=2, default=str))


def _search(args: argparse.Namespace) -> None:
    config = from_args(SearchConfig, args)
    from fashion_batch.search import format_results, run

    print(format_results(run(config), config.width))


def _drift(args: argparse.Namespace) -> None:
    config = from_args(DriftConfig, args)
    from fashion_batch.evaluate.drift import summary
    from fashion_batch.evaluate.drift_job import run

    report = run(config)
    print(json.dumps(report, indent=2) if config.json else summary(report))


def _report(args: argparse.Namespace) -> None:
    config = from_args(ReportConfig, args)
    from fashion_batch.report import render, run

    print(render(run(config), config.json))


@dataclass(frozen=True)
class Command:
    name: str
    config: type
    run: Callable[[argparse.Namespace], None]
    help: str


COMMANDS = (
    Command("embed", EmbedConfig, _embed, "embed a Parquet catalog with Ray Data"),
    Command(
        "replay-quarantine",
        ReplayConfig,
        _replay,
        "re-embed a finished output's quarantined rows under a fix, as a new snapshot",
    ),
    Command("train", TrainConfig, _train, "fine-tune the seed architecture with Ray Train (MNRL)"),
    Command(
        "evaluate",
        EvaluateConfig,
        _evaluate,
        "NDCG@10, MRR@10, Recall@10 of a model on a query set",
    ),
    Command(
        "sample-data",
        SampleDataConfig,
        _sample_data,
        "write a synthetic catalog, triplets and queries",
    ),
    Command("search", SearchConfig, _search, "top-k listings for a query over an embed output"),
    Command("drift", DriftConfig, _drift, "how far two embed outputs' vectors and neighbours went"),
    Command("report", ReportConfig, _report, "an embed output's cost and throughput ledger"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashion-batch", description="Batch embedding of a fashion marketplace catalog."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log INFO lines too (default: warnings only)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        add_arguments(p, command.config)
        p.set_defaults(func=command.run, config_class=command.config)
    return parser


def _print_config(args: argparse.Namespace) -> None:
    """`--print-config`: the effective settings (file, then flags, then defaults) as TOML."""
    print(dumps(from_args(args.config_class, args)), end="")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # A job's progress (runtime.progress) shows without -v: off a TTY its lines are the only sign
    # that a long run is moving. -v adds every other INFO line.
    logging.getLogger(progress_log.name).setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redact_record)
    ours = not ray_running()  # a caller's Ray (a notebook, a test session) is left running
    if ours:
        allow_early_shutdown()  # stopped at the end anyway: a job may begin that when it is done
    try:
        (_print_config if args.print_config else args.func)(args)
    except (UserError, GateError) as e:
        print(f"fashion-batch {args.command}: error: {redact_text(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        print(f"fashion-batch {args.command}: failed: {redact_text(str(e))}", file=sys.stderr)
        return 1
    finally:
        if ours:
            shutdown_ray()
    return 0


def console() -> None:
    """The `fashion-batch` script and `python -m fashion_batch`: `main()`, then the exit.

    A command that loaded torch, transformers and Ray spends a second or more at a normal exit
    collecting the objects of those modules (the interpreter's module teardown), after everything
    is written and printed. So once `main()` has returned, this runs what a normal exit still
    does that matters (the atexit handlers: logging's flush, Ray's; the standard streams
    flushed) and ends the process with `os._exit`. Threads still running are not waited for:
    everything a command does is done when `main()` returns (Ray is stopped, the embed sidecar
    ended)."""
    import atexit
    import contextlib
    import os

    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`) or stream
            stream.flush()
    os._exit(code)


def _redact_record(record: logging.LogRecord) -> bool:
    """A log filter: credentials in URIs never reach the log (io.fs.redact)."""
    record.msg, record.args = redact_text(record.getMessage()), ()
    return True


if __name__ == "__main__":
    console()
