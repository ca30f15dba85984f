"""The Kubernetes target: a DesiredState applied to a cluster with server-side apply.

    api = Api.from_kubeconfig()                      # or Api.in_cluster()
    target = KubernetesTarget(api, image="weft:0.1")
    loop.Reconciler(source, target, status_path).run(stop, wake)

`objects` builds what Weft owns, `compare` tells whether a live object holds it, `target` plans,
applies and prunes, `leader` keeps two replicas from writing at once.
"""

from reconciler.targets.kubernetes.api import Api, ApiError, UnreachableError
from reconciler.targets.kubernetes.target import ConflictError, KubernetesTarget

__all__ = ["Api", "ApiError", "ConflictError", "KubernetesTarget", "UnreachableError"]
