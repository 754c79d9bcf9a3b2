"""edgeprune: make a trained CNN fit an edge device."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeprune")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from edgeprune.errors import EdgepruneError

__all__ = ["EdgepruneError", "__version__"]
