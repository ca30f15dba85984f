"""The local target: the mesh as processes on this machine (the embedded default)."""
