"""The sidecar: the Python agent around fastpath (config and certificate files, admin port,
metrics, span export). It imports nothing of the control plane: it runs beside every workload."""
