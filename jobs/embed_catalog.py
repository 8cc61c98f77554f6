"""Entry point for `ray job submit`: the same flags as `fashion-batch embed`.

On a cluster started with `ray up cluster.yaml`:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/embed_catalog.py \
            --input s3://bucket/listings/ --output s3://bucket/embeddings/2026-11-28/ \
            --model /mnt/models/fashion-seed --gpus-per-actor 1 --min-actors 1 --max-actors 8

Ray sets RAY_ADDRESS for the job, so `embed.run` joins the cluster instead of starting one. A
local `--model` dir must exist on every node (cluster.yaml's file_mounts), or be a hub id.
"""

import sys

from fashion_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
