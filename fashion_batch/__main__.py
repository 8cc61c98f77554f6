"""`python -m fashion_batch` is the same as the `fashion-batch` console script."""

from fashion_batch.cli import console

console()
