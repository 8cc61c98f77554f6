"""Entry point for `ray job submit`: the same flags as `fashion-batch embed`.

On a cluster started with `ray up cluster.yaml` (runbook: docs/cluster.md),
with `ray dashboard cluster.yaml` tunnelling the Jobs API to localhost:8265:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".git"], "env_vars": {"HF_HUB_OFFLINE": "1"}}' -- \
        python jobs/embed_catalog.py \
            --input s3://bucket/listings/ --output s3://bucket/embeddings/2026-11-28/ \
            --model /home/ubuntu/fashion-batch-models/seed --gpus-per-actor 1 \
            --min-actors 1 --max-actors 8

Ray sets RAY_ADDRESS for the job, so `fashion_batch.embed.run` joins the cluster instead of
starting one. A local `--model` dir must exist on every GPU worker: cluster.yaml syncs
/home/ubuntu/fashion-batch-models from the head to each worker it launches. Pass
`--gpus-per-actor 1` on an autoscaling cluster: while it is scaled to zero it has no GPUs to
detect. Tested by tests/cluster/test_job_submit.py against a local `ray start --head`.
"""

import sys

from fashion_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
