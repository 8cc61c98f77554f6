"""`python -m fashion_batch` is the same as the `fashion-batch` console script."""

import sys

from fashion_batch.cli import main

sys.exit(main())
