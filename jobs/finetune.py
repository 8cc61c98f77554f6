"""Entry point for `ray job submit`: the same flags as `fashion-batch train`.

One node with 4 GPUs (cluster from `ray up cluster.yaml`), the seed recipe on 4 workers × 4 rows
(global batch 16, negatives gathered across GPUs):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/finetune.py \
            --triplets s3://bucket/triplets/train.parquet --output /mnt/models/fashion-seed \
            --num-workers 4 --use-gpu --max-failures 2 --storage-path /mnt/ray_results

Ray sets RAY_ADDRESS for the job, so `train.run` joins the cluster instead of starting one.
Submitting the same command again resumes the run from its last checkpoint (same
`--storage-path` + `--name`). On several nodes, `--storage-path` must be shared (NFS or s3://);
OUTPUT is written on the node that runs this script.

Exit codes: 0 success, 2 bad arguments or input, 1 anything else.
"""

import sys

from fashion_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
