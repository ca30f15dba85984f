"""Retries as the intent writes them (a Route rule's, an HTTP ExternalService port's), turned into
the ProxyConfig's RetryPolicy: one conversion for every place a sidecar retries."""

from __future__ import annotations

from reconciler.compiler import proxyconfig as pc
from reconciler.intent import model


def policy(r: model.Retries | None) -> pc.RetryPolicy | None:
    """A Route rule's or an ExternalService port's retries, as the sidecar takes them."""
    if r is None:
        return None
    budget = (
        None
        if r.budget is None
        else pc.RetryBudget(
            percent=r.budget.percent, min_retries_per_second=r.budget.min_retries_per_second
        )
    )
    return pc.RetryPolicy(
        attempts=r.attempts,
        per_try_timeout_ms=r.per_try_timeout,
        retry_on=list(r.retry_on),
        budget=budget,
    )
