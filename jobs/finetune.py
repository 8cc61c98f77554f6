"""Entry point for `ray job submit`: the same flags as `fashion-batch train`.

One node with 4 GPUs (cluster.yaml's train_g5_12x), the seed recipe on 4 workers × 4 rows
(global batch 16, negatives gathered across GPUs):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".git"]}' -- \
        python jobs/finetune.py \
            --triplets s3://bucket/triplets/train.parquet \
            --output /home/ubuntu/fashion-batch-models/seed \
            --num-workers 4 --use-gpu --max-failures 2 --storage-path s3://bucket/ray_results

Ray sets RAY_ADDRESS for the job, so `train.run` joins the cluster instead of starting one.
Submitting the same command again resumes the run from its last checkpoint (same
`--storage-path` + `--name`). On several nodes `--storage-path` must be shared (s3:// or NFS):
the workers write checkpoints there and the driver, on the head, publishes OUTPUT from it; OUTPUT
is written on the head (under /home/ubuntu/fashion-batch-models, cluster.yaml syncs it to the
workers launched afterwards, so `embed --model` finds it there).

Exit codes: 0 success, 2 bad arguments or input, 1 anything else.
"""

import sys

from fashion_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
