"""fashion-batch: distributed batch embedding of a fashion marketplace catalog.

    from fashion_batch import EmbedConfig, embed

    result = embed(EmbedConfig(input="catalog/", output="embeddings/"))
    print(result.rows_out, result.manifest_path)

`embed` and `train` (fashion_batch.api) are functions here, although `fashion_batch.embed` and
`fashion_batch.train` are also the jobs' packages: the packages are imported first and the
functions bound over their names, so `from fashion_batch import embed` is always the function,
whatever was imported before. Import the jobs' modules with `from fashion_batch.embed import
job`, not `import fashion_batch.embed.job` (that walks attributes and finds the function).
Neither Ray nor torch is imported until a job runs.
"""

from importlib.metadata import PackageNotFoundError, version

from fashion_batch.errors import GateError, InputError, ModelError, UserError

try:
    __version__ = version("fashion-batch")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# After __version__ and the errors: the packages below import them from here.
from fashion_batch.api import (  # noqa: E402
    EmbedConfig,
    EmbedResult,
    ReplayConfig,
    TrainConfig,
    TrainResult,
    embed,
    replay_quarantine,
    train,
)

__all__ = [
    "EmbedConfig",
    "EmbedResult",
    "GateError",
    "InputError",
    "ModelError",
    "ReplayConfig",
    "TrainConfig",
    "TrainResult",
    "UserError",
    "__version__",
    "embed",
    "replay_quarantine",
    "train",
]
