"""Type stub for the fastpath extension module (Rust, built by maturin)."""

__all__ = ["check_route_regex", "version"]

def version() -> str:
    """The fastpath crate version this extension was built from."""

def check_route_regex(pattern: str) -> None:
    """Raise ValueError with a one-line reason if the data plane cannot compile `pattern`."""
