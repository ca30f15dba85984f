"""The sidecar: the Python agent around fastpath (config and certificate files, admin port,
metrics, span export) and the binding of logical ProxyConfigs to this machine's addresses."""
