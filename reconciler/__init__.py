"""Weft's control plane: intent, compiler and (later) identity, git source, targets and loop.

Layers, lowest first: `intent` (the typed mesh model read from YAML), `compiler` (pure functions
from intent to what the data plane enforces), `cli`. A lower layer never imports a higher one;
`lint-imports` checks it.
"""

from importlib import metadata

try:
    __version__ = metadata.version("weft")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
