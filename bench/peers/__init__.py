"""What the proxy benchmarks share: the machine (processes, pinning, /proc), the SPIFFE
certificates, and the configuration of every peer (Weft, Envoy, HAProxy, nginx)."""
