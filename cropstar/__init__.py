"""cropstar: crop classification from Sentinel-2 time series with deep STAR recurrent networks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cropstar")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
