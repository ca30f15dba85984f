"""Weft's control plane (intent, compiler, identity, git source, targets, the loop and the CLI)
and the sidecar's agent around the Rust data plane (`_native`).

Layers, lowest first: `intent` (the typed mesh model read from YAML), `compiler` (pure functions
from intent to what the data plane enforces), `identity`, then `targets`, `gitsource` and
`status`, the `loop` above them, and `cli` at the top. A lower layer never imports a higher one;
`lint-imports` checks it (the contracts are in pyproject.toml, explained in
docs/architecture.md).
"""

from importlib import metadata

try:
    __version__ = metadata.version("weft")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
