"""Workload identity: the mesh CA, SPIFFE certificates, renewal and trust-bundle rollover.

Only this package reads a CA key. Callers that issue get an `Issuer`, which cannot return the
key; keys print as their curve name and refuse to be pickled.
"""
