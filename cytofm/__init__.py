"""cytofm: an end-to-end pipeline for cytology foundation models.

The package holds all logic; the Snakemake workflow only calls its public functions.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cytofm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
