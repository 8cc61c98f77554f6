"""`fashion-batch` command line: argument parsing only; each command builds one config and calls
its module's `run`. Exit codes (design.md): 0 success, 2 bad arguments or input, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from fashion_batch.catalog import InputError
from fashion_batch.encoder import ModelError


def _add_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="Parquet file, directory or glob; local or s3://")
    p.add_argument("--output", required=True, help="output directory; local or s3://")
    p.add_argument("--model", default="builtin:minilm", help="model dir, hub id or builtin:minilm")
    p.add_argument("--id-column", default="listing_id")
    p.add_argument("--text-template", default="{title}. {description}")
    p.add_argument(
        "--batch-size", type=int, help="texts per forward pass (default: 16 on CPU, 256 on GPU)"
    )
    p.add_argument("--num-actors", type=int, help="fixed actor pool size")
    p.add_argument("--min-actors", type=int, help="autoscaling pool: lower bound")
    p.add_argument("--max-actors", type=int, help="autoscaling pool: upper bound")
    p.add_argument("--gpus-per-actor", type=float, help="default: 1 if the cluster has GPUs")
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        help="Ray CPUs reserved per actor (default: 1 per GPU actor; CPU actors: all CPUs but one, "
        "shared)",
    )
    p.add_argument(
        "--threads-per-actor",
        type=int,
        help="torch / ONNX Runtime threads (default: CPUs/actors: 1 with the default pool)",
    )
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "onnx-int8"],
        help="CPU actors' runtime: ONNX Runtime fp32, or int8 weights (cosine >= 0.99 to fp32)",
    )
    p.add_argument("--normalize", action="store_true", help="L2-normalize embeddings")
    p.add_argument("--limit", type=int, help="embed only the first N rows")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished output, or discard an unfinished one from other settings",
    )
    p.add_argument(
        "--previous",
        metavar="URI",
        help="last night's output: embed only new or changed listings, carry the rest over",
    )
    p.add_argument("--rows-per-part", type=int, default=4096, dest="rows_per_unit")


def embed_config(args: argparse.Namespace):
    from fashion_batch.embed import EmbedConfig

    names = EmbedConfig.__dataclass_fields__.keys()
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    return EmbedConfig(**kwargs, extra={"argv": sys.argv[1:]})


def _cmd_embed(args: argparse.Namespace) -> None:
    from fashion_batch.embed import run, summary

    print(summary(run(embed_config(args))))


def _cmd_train(args: argparse.Namespace) -> None:
    from fashion_batch.train import config_from_args, run

    run(config_from_args(args))  # prints its own summary


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from fashion_batch.evaluate import evaluate_config_from_args, run, summary

    print(summary(run(evaluate_config_from_args(args))))


def _cmd_sample_data(args: argparse.Namespace) -> None:
    from fashion_batch.sample_data import SampleDataConfig, run

    try:
        config = SampleDataConfig(output=args.output, listings=args.listings, seed=args.seed)
    except ValueError as e:
        raise InputError(str(e)) from e
    result = run(config)
    print(json.dumps(result, indent=2, default=str))


def _cmd_search(args: argparse.Namespace) -> None:
    from fashion_batch.search import SearchConfig, format_results, run

    config = SearchConfig(
        embeddings=args.embeddings,
        catalog=args.catalog,
        model=args.model,
        query=args.query,
        k=args.k,
        id_column=args.id_column,
        text_template=args.text_template,
    )
    print(format_results(run(config), config.width))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashion-batch", description="Batch embedding of a fashion marketplace catalog."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="embed a Parquet catalog with Ray Data")
    _add_embed_args(p)
    p.set_defaults(func=_cmd_embed)

    from fashion_batch.evaluate import add_evaluate_args
    from fashion_batch.train import add_train_args

    p = sub.add_parser("train", help="fine-tune the seed architecture with Ray Train (MNRL)")
    add_train_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="NDCG@10, MRR@10, Recall@10 of a model on a query set")
    add_evaluate_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sample-data", help="write a synthetic catalog, triplets and queries")
    p.add_argument("--output", required=True)
    p.add_argument("--listings", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_sample_data)

    p = sub.add_parser("search", help="top-k listings for a query over an embed output")
    p.add_argument("--embeddings", required=True, help="an embed --output (local or s3://)")
    p.add_argument("--catalog", required=True, help="the catalog that was embedded, for the text")
    p.add_argument("--model", required=True, help="the model the embeddings were made with")
    p.add_argument("--id-column", default="listing_id")
    p.add_argument("--text-template", default="{title}. {description}")
    p.add_argument("-k", "--k", type=int, default=10, help="how many listings (default 10)")
    p.add_argument("query", help="the query text")
    p.set_defaults(func=_cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except (InputError, ModelError) as e:
        print(f"fashion-batch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        traceback.print_exc()
        print(f"fashion-batch {args.command}: failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
