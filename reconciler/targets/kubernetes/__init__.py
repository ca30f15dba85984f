"""The Kubernetes target: a DesiredState applied to a cluster with server-side apply.

    api = Api.from_kubeconfig()                      # or Api.in_cluster()
    target = KubernetesTarget(api, image="weft:0.1")
    loop.Reconciler(source, target, status_path).run(stop, wake)

`target` drives the loop's steps, one module each: `observe`, `desired` (the objects a
DesiredState calls for) and `plan`, `apply`, `prune`, `report`; `identities` keeps the identity
store's Secrets. Beneath them `objects` builds what Weft owns, `compare` tells whether a live
object holds it, `inventory` records what Weft created, `api` speaks to the API server and
`workers` spreads requests over a few threads. `leader` keeps two replicas from writing at once.
"""

from reconciler.targets.kubernetes.api import Api, ApiError, UnreachableError
from reconciler.targets.kubernetes.plan import ConflictError
from reconciler.targets.kubernetes.target import KubernetesTarget

__all__ = ["Api", "ApiError", "ConflictError", "KubernetesTarget", "UnreachableError"]
