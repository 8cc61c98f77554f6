"""Settings of `fashion-batch train`: the `TrainConfig` dataclass (it builds the CLI flags) and
the constants of the seed recipe that the data, model, loop and card modules share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fashion_batch.encoders.models import SEED_BASE_MODEL
from fashion_batch.errors import InputError
from fashion_batch.options import option

COLUMNS = ("anchor", "positive", "negative")
SEED_COLUMNS = ("sentence_0", "sentence_1", "sentence_2")  # the seed's dataset names
METRICS_FILE = "training_metrics.json"
RUN_FILE = "run.json"
STOP_FILE = "non_finite_stop.json"  # in the run dir: why the workers stopped early
MNRL_SCALE = 20.0
MAX_GRAD_NORM = 1.0
HEAD_INITS = ("preserve", "random")


@dataclass
class TrainConfig:
    """Settings of `fashion-batch train`; the defaults are the seed recipe.

    Args:
        triplets: Parquet file/dir or JSONL (local or s3://) with anchor, positive, negative
            (sentence_0/1/2 are renamed).
        output: local directory for the trained sentence-transformers model.
        base_model: local dir, hub id or `builtin:minilm`; the seed head goes on top.
        num_workers: Ray Train workers (one per GPU with `use_gpu`).
        use_gpu: one GPU per worker, fp16 autocast.
        epochs: passes over the training triplets.
        batch_size: GLOBAL batch; each worker takes batch_size // num_workers rows.
        lr: peak learning rate (linear decay to 0, no warm-up).
        seed: model init, sampler order and train/eval split.
        eval_split: share of distinct anchors held out for evaluation (0: no evaluation);
            not used with `eval_triplets` or `eval_queries`.
        eval_triplets: held-out triplets to evaluate on instead of splitting `triplets`.
        storage_path: Ray Train storage (checkpoints); default `ray_results/` beside OUTPUT.
            Must be storage every node reaches (s3://, or NFS/EFS with --shared-fs) when the
            cluster's nodes span hosts: a local one is refused there (runtime/nodes.py).
        name: run name under storage_path; default `finetune-<basename of OUTPUT>`.
        max_failures: worker-group restarts from the last checkpoint before giving up.
        logging_steps: record the mean loss every this many steps (and at step 1).
        checkpoint_steps: checkpoint every this many steps; default once per epoch.
        max_seq_length: tokens per text; longer texts are truncated.
        gather_across_devices: MNRL negatives from all workers; None = on when num_workers > 1.
        cpus_per_worker: CPUs reserved per worker (also torch threads on CPU).
        head_init: `preserve` (default) starts the Dense head as the identity (base dim 768) or a
            semi-orthogonal matrix (W^T W = I, base dim < 768), so step 0 ranks exactly like the
            base; `random` is the seed's own init (nn.Linear's default), for reproducing the seed.
        normalize_output: the model ends in a Normalize module (unit vectors: its dot product,
            the seed's similarity for users, ranks like the cosine MNRL trains); off: the seed's
            exact modules, whose dot product also weighs the untrained vector lengths.
        gate_margin: OUTPUT is written only if the published epoch's held-out NDCG@10 is at
            least the base's minus this; otherwise GateError (exit 3) and the model is kept
            beside OUTPUT. Skipped when nothing is held out.
        eval_queries: JSONL queries with relevant listing ids (`sample-data`'s queries.jsonl),
            evaluated against the whole `eval_catalog` instead of the held-out triplets.
        eval_catalog: Parquet catalog (listing_id, title, description) the queries search.
        mine_catalog: Parquet catalog (listing_id, title, description; brand and seller_id
            used when present) to mine hard negatives from with the base model, replacing each
            triplet's negative (train/mine.py: the filters against false negatives).
        mine_range: candidates per query: the base's top this many listings.
        mine_skip: the base's top this many listings are never negatives (for queries with many
            unlabelled relevant listings).
        mine_max_similarity: a candidate with a cosine to the positive above this is a
            near-duplicate of it, never a negative.
        fail_at_step: testing only: rank 0 raises once after this step (marker in the run dir).
        nan_at_step: testing only: rank 0's loss is NaN at this step (the run must stop).
    """

    triplets: str = option(help="Parquet file/dir or JSONL; local or s3://")
    output: str = option(help="local dir for the trained model")
    base_model: str = option(SEED_BASE_MODEL, help="dir, hub id or builtin:minilm")
    num_workers: int = option(2, help="Ray Train workers")
    use_gpu: bool = option(False, help="one GPU per worker, fp16")
    epochs: int = option(10, help="passes over the training triplets")
    batch_size: int = option(16, help="GLOBAL batch size")
    lr: float = option(5e-5, help="peak learning rate")
    seed: int = option(42, help="model init, sampler order and train/eval split")
    eval_split: float = option(0.2, help="share of anchors held out")
    eval_triplets: str | None = option(None, help="held-out triplets instead of --eval-split")
    storage_path: str | None = option(
        None, help="Ray Train storage; default: ray_results/ beside OUTPUT"
    )
    shared_fs: bool = option(
        False,
        help="a local --storage-path is on storage every Ray node mounts (NFS, EFS); without "
        "it a local one is refused on a cluster that spans hosts",
    )
    name: str | None = option(None, help="run name; same storage path + name resumes")
    max_failures: int = option(0, help="restarts from last checkpoint")
    logging_steps: int = option(10, help="record the mean loss every this many steps")
    checkpoint_steps: int | None = option(None, help="default: once per epoch")
    max_seq_length: int = option(512, help="tokens per text; longer texts are truncated")
    gather_across_devices: bool | None = option(
        None,
        negatable=True,
        help="MNRL negatives from all workers (default: on with more than one worker)",
    )
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker")
    head_init: str = option(
        "preserve",
        choices=HEAD_INITS,
        help="Dense head init: preserve (identity / semi-orthogonal: step 0 ranks like the base) "
        "or random (the seed's own init)",
    )
    normalize_output: bool = option(
        True,
        negatable=True,
        help="end the model in a Normalize module, so dot product ranks like the trained cosine",
    )
    gate_margin: float = option(
        0.0, help="publish only if held-out NDCG@10 >= the base's minus this; else exit 3"
    )
    eval_queries: str | None = option(
        None, help="JSONL queries with relevant_ids, searched against --eval-catalog"
    )
    eval_catalog: str | None = option(None, help="Parquet catalog that --eval-queries search")
    mine_catalog: str | None = option(
        None, help="replace each negative with a hard one mined from this Parquet catalog"
    )
    mine_range: int = option(50, help="mine among the base's top this many listings per query")
    mine_skip: int = option(0, help="skip the base's top this many listings (likely relevant)")
    mine_max_similarity: float = option(
        0.95, help="drop candidates closer than this (cosine) to the positive: near-duplicates"
    )
    fail_at_step: int | None = option(None, hidden=True, help="testing only")
    nan_at_step: int | None = option(None, hidden=True, help="testing only")

    def __post_init__(self):
        if not self.triplets:
            raise InputError("--triplets must name a file or directory")
        if not self.output or "://" in self.output:
            raise InputError(f"--output must be a local directory, got {self.output!r}")
        positive = dict(
            num_workers=self.num_workers,
            epochs=self.epochs,
            batch_size=self.batch_size,
            logging_steps=self.logging_steps,
            max_seq_length=self.max_seq_length,
        )
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value}")
        if self.batch_size % self.num_workers:
            raise InputError(
                f"--batch-size {self.batch_size} is the global batch and must be divisible by "
                f"--num-workers {self.num_workers}"
            )
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.eval_split < 1:
            raise InputError(f"--eval-split must be in [0, 1), got {self.eval_split}")
        if self.max_failures < -1:
            raise InputError(
                f"--max-failures must be >= -1 (-1: retry forever), got {self.max_failures}"
            )
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise InputError(f"--checkpoint-steps must be >= 1, got {self.checkpoint_steps}")
        if not self.cpus_per_worker > 0:
            raise InputError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if self.head_init not in HEAD_INITS:
            raise InputError(
                f"--head-init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}"
            )
        if not (self.gate_margin >= 0 and self.gate_margin < 1):
            raise InputError(f"--gate-margin must be in [0, 1), got {self.gate_margin}")
        if bool(self.eval_queries) != bool(self.eval_catalog):
            raise InputError("--eval-queries and --eval-catalog go together: pass both or neither")
        if not 0 <= self.mine_skip < self.mine_range:
            raise InputError(
                f"--mine-skip {self.mine_skip} must be >= 0 and below --mine-range "
                f"{self.mine_range}"
            )
        if not 0 < self.mine_max_similarity <= 1:
            raise InputError(
                f"--mine-max-similarity must be in (0, 1], got {self.mine_max_similarity}"
            )
        output = Path(self.output).expanduser().resolve()
        self.output = str(output)
        if self.storage_path is None:
            self.storage_path = str(output.parent / "ray_results")
        elif "://" not in self.storage_path:
            self.storage_path = str(Path(self.storage_path).expanduser().resolve())
        if self.name is None:
            self.name = f"finetune-{output.name}"
        if not self.name or "/" in self.name:
            raise InputError(f"--name must be a plain directory name, got {self.name!r}")
        for name in ("fail_at_step", "nan_at_step"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise InputError(f"--{flag} must be >= 1, got {getattr(self, name)}")
        if self.fail_at_step is not None and "://" in self.storage_path:
            raise InputError("--fail-at-step needs a local --storage-path (it leaves a marker)")

    @property
    def per_device_batch_size(self) -> int:
        return self.batch_size // self.num_workers
