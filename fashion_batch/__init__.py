"""fashion-batch: distributed batch embedding of a fashion marketplace catalog.

from fashion_batch.embed import EmbedConfig, run
manifest = run(EmbedConfig(input="catalog/", output="embeddings/"))
"""

from importlib.metadata import PackageNotFoundError, version

from fashion_batch.errors import GateError, InputError, ModelError, UserError

try:
    __version__ = version("fashion-batch")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["GateError", "InputError", "ModelError", "UserError", "__version__"]
