"""The Kubernetes objects Weft owns, built from a DesiredState: pure data, no I/O.

Per Service: a ConfigMap with its ProxyConfig and the sidecar's listeners, and the injection into
each of its workloads (the sidecar as a native sidecar container, the capture init container and
two volumes — nothing else of the pod template). The compiler's discovery Services and
NetworkPolicies are used as they are. Identity Secrets are the identity store's
(`reconciler.identity.secretstore`).

Ports inside a meshed pod are fixed, as in every mesh: the app's own ports stay the app's, and
iptables sends inbound traffic for them to the sidecar's mTLS listeners.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler import capture, hostport
from reconciler.compiler import WorkloadSpec
from reconciler.compiler import proxyconfig as pc
from reconciler.identity.secretstore import workload_secret_name

Object = dict[str, Any]

MANAGED_BY = {"app.kubernetes.io/managed-by": "weft"}
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=weft"
PART = "weft.dev/part"
SERVICE = "weft.dev/service"
INJECTED = "weft.dev/injected-for"  # annotation on a workload: the Service it is meshed for
APPLIED = "weft.dev/applied"  # annotation: digest of what Weft last applied to the object
SYSTEM_NAMESPACE = "weft-system"
INVENTORY = "weft-inventory"
STATUS = "weft-status"

SIDECAR = "weft-sidecar"
CAPTURE = "weft-capture"
CONFIG_VOLUME, CERTS_VOLUME = "weft-config", "weft-certs"
VOLUMES = (CONFIG_VOLUME, CERTS_VOLUME)
CONFIG_DIR, CERTS_DIR = "/etc/weft/config", "/etc/weft/certs"
SIDECAR_UID = capture.PROXY_UID


def sidecar_security() -> dict[str, Any]:
    """How Weft's own proxy containers (sidecars and gateways) run: unprivileged, read-only,
    no capabilities, the runtime's default seccomp profile."""
    return {
        "runAsUser": SIDECAR_UID,
        "runAsGroup": SIDECAR_UID,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


ADMIN_PORT = 15020
CAPTURE_PORT = capture.CAPTURE_PORT
OUTBOUND_HTTP_PORT = 15080
INBOUND_BASE = 15100  # inbound port i of the service: 15100 + i
TCP_BASE = 15200  # the i-th TCP upstream or egress, for apps that address the sidecar directly
CAPTURE_SCRIPT = "/usr/local/lib/weft/weft-capture.sh"

# The workloads whose pod template Weft patches, with their API versions. A CronJob's template
# is one level deeper (`spec.jobTemplate.spec.template`) and, unlike a Job's, mutable: each Job
# it starts is made from the injected template. A Job's own template is immutable, so Jobs are
# meshed at Pod admission instead (`job_injection`, deploy/40-jobs.yaml): not a kind here.
WORKLOAD_API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "CronJob": "batch/v1",
}
WORKLOAD_KINDS = tuple(WORKLOAD_API_VERSIONS)


def template_path(kind: str) -> tuple[str, ...]:
    """Where a workload of `kind` keeps its pod template."""
    if kind == "CronJob":
        return ("spec", "jobTemplate", "spec", "template")
    return ("spec", "template")


def pod_template(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    """A live workload's pod template (empty when it has none)."""
    found: Any = workload
    for key in template_path(str(workload.get("kind", ""))):
        found = (found.get(key) or {}) if isinstance(found, Mapping) else {}
    return found if isinstance(found, Mapping) else {}


def _at(path: Sequence[str], value: Object) -> Object:
    """`value` nested under `path`: ("spec", "template") → {"spec": {"template": value}}."""
    for key in reversed(path):
        value = {key: value}
    return value


def sidecar_configmap_name(service: str) -> str:
    return f"{service}-weft-sidecar"


def labels(part: str, service: str | None = None) -> dict[str, str]:
    found = {**MANAGED_BY, PART: part}
    if service:
        found[SERVICE] = service
    return found


def inbound_ports(
    config: pc.ProxyConfig, previous: Mapping[str, int] | None = None
) -> dict[str, int]:
    """The mTLS listener port of each of the service's ports, by port name.

    Sticky: a port keeps the listener it had (`previous`, read back from the live ConfigMap), and
    a new port takes the lowest free one. Running pods' iptables rules were written at their
    start, while the ConfigMap they share is reloaded live; if adding a port shifted the others,
    old pods would send one port's traffic to another's listener until the rollout ended."""
    names = [p.name for p in config.inbound]
    chosen = {n: port for n, port in (previous or {}).items() if n in names}
    used = set(chosen.values())
    free = (port for port in range(INBOUND_BASE, TCP_BASE) if port not in used)
    for name in names:
        if name not in chosen:
            chosen[name] = next(free)
    return {n: chosen[n] for n in names}


def live_inbound_ports(configmap: Mapping[str, Any] | None) -> dict[str, int]:
    """The listener ports a live sidecar ConfigMap assigns; empty when there is none to read."""
    try:
        found = json.loads(configmap["data"]["listeners.json"])["inbound"]  # type: ignore[index]
        return {str(n): hostport.parse(str(a)).port for n, a in found.items()}
    except (TypeError, KeyError, ValueError, IndexError, AttributeError):
        return {}


def listeners(
    config: pc.ProxyConfig,
    cluster_ips: Mapping[tuple[str, str], str] | None = None,
    inbound: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Where the sidecar listens inside the pod (the `Listeners` object of docs/proxyconfig.md).

    `cluster_ips` are the ClusterIPs of the Kubernetes Services apps call by name: a captured
    connection to one of them, on a TCP upstream's port, is that upstream (HTTP is routed by its
    Host header and needs no address). `inbound` is `inbound_ports`' choice."""
    data = config.as_dict()
    inbound = inbound or inbound_ports(config)
    tcp_keys = [f"{t['service']}:{t['port']}" for t in data["outbound"]["tcp"]]
    tcp_keys += [
        f"{e['host']}:{e['port']}" for e in data["outbound"]["egress"] if e["protocol"] != "http"
    ]
    originals = {}
    for t in data["outbound"]["tcp"]:
        ns, name = t["service"].split("/")
        ip = (cluster_ips or {}).get((ns, name))
        if ip:
            originals[f"{ip}:{t['port']}"] = f"{t['service']}:{t['port']}"
    return {
        "inbound": {p["name"]: f"0.0.0.0:{inbound[p['name']]}" for p in data["inbound"]},
        "app": {p["name"]: f"127.0.0.1:{p['targetPort']}" for p in data["inbound"]},
        "outboundHttp": f"127.0.0.1:{OUTBOUND_HTTP_PORT}",
        "outboundTcp": {k: f"127.0.0.1:{TCP_BASE + i}" for i, k in enumerate(sorted(tcp_keys))},
        # iptables REDIRECT from OUTPUT rewrites the destination to loopback.
        "outboundCapture": f"127.0.0.1:{CAPTURE_PORT}",
        "originalDestinations": dict(sorted(originals.items())),
    }


def sidecar_configmap(
    namespace: str,
    service: str,
    config: pc.ProxyConfig,
    cluster_ips: Mapping[tuple[str, str], str] | None = None,
    inbound: Mapping[str, int] | None = None,
) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": sidecar_configmap_name(service),
            "namespace": namespace,
            "labels": labels("sidecar-config", service),
        },
        "data": {
            "proxyconfig.json": config.to_json(),
            "listeners.json": json.dumps(
                listeners(config, cluster_ips, inbound), indent=2, sort_keys=True
            )
            + "\n",
        },
    }


def capture_args(
    config: pc.ProxyConfig,
    inbound: Mapping[str, int] | None = None,
    exclude_cidrs: Sequence[str] = (),
) -> list[str]:
    """The capture script's arguments: outbound to the capture listener, except the sidecar's
    own traffic, DNS (port 53: TCP lookups must reach the cluster's resolver, not the mesh) and
    `exclude_cidrs` (the API server's address: in-pod controllers talk to it directly); and
    each pod port's inbound traffic to its mTLS listener."""
    ports = inbound or inbound_ports(config)
    command = capture.apply_command(
        proxy_uid=SIDECAR_UID,
        capture_port=CAPTURE_PORT,
        inbound={p.target_port: ports[p.name] for p in config.inbound},
        exclude_ports=(53,),
        exclude_cidrs=exclude_cidrs,
    )
    return command[2:]  # without "sh <path in this checkout>": the image has its own copy


def injection(
    kind: str,
    namespace: str,
    name: str,
    *,
    service: str,
    config: pc.ProxyConfig,
    image: str,
    inbound: Mapping[str, int] | None = None,
    exclude_cidrs: Sequence[str] = (),
    probes: Mapping[str, Mapping[str, Any]] | None = None,
) -> Object:
    """The fields Weft applies to one workload, and nothing more: server-side apply gives Weft
    ownership of exactly these, and the application team keeps every other field. `probes`
    (from `app_probes`) are the app's probes on meshed ports: the sidecar gets them to run,
    and the pods an annotation naming them, which deploy/30-probes.yaml's admission policy
    reads to point them at the sidecar. The app's containers are never touched."""
    template = pod_injection(
        service=service,
        config=config,
        image=image,
        inbound=inbound,
        exclude_cidrs=exclude_cidrs,
        probes=probes,
    )
    return {
        "apiVersion": WORKLOAD_API_VERSIONS[kind],
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "annotations": {INJECTED: service}},
        **_at(template_path(kind), template),
    }


def pod_injection(
    *,
    service: str,
    config: pc.ProxyConfig,
    image: str,
    inbound: Mapping[str, int] | None = None,
    exclude_cidrs: Sequence[str] = (),
    probes: Mapping[str, Mapping[str, Any]] | None = None,
) -> Object:
    """What the injection puts into a pod template (`injection`'s arguments): the capture init
    container, the sidecar as a native sidecar, their two volumes, and with `probes` the
    annotation naming them."""
    service_account = config.workload.service_account
    probe: Object = {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 2}
    sidecar: Object = {
        "name": SIDECAR,
        "image": image,
        # A native sidecar (an init container that keeps running): the app's containers start
        # only once its startup probe passes, so no app request races the proxy's readiness.
        "restartPolicy": "Always",
        "args": [
            "sidecar",
            "--config",
            f"{CONFIG_DIR}/proxyconfig.json",
            "--listeners",
            f"{CONFIG_DIR}/listeners.json",
            "--certs",
            CERTS_DIR,
            "--admin",
            f"0.0.0.0:{ADMIN_PORT}",
        ],
        "ports": [{"name": "weft-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        # Only when there are probes: a field in every injection would roll every pod once.
        **(
            {"env": [{"name": APP_PROBES_ENV, "value": json.dumps(dict(probes), sort_keys=True)}]}
            if probes
            else {}
        ),
        "startupProbe": {**probe, "failureThreshold": 60},
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "10m", "memory": "40Mi"}},
        "securityContext": sidecar_security(),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            # Only the sidecar mounts the certificates: the app never sees the key.
            {"name": CERTS_VOLUME, "mountPath": CERTS_DIR, "readOnly": True},
        ],
    }
    capture = {
        "name": CAPTURE,
        "image": image,
        "command": ["/bin/sh", CAPTURE_SCRIPT],
        "args": capture_args(config, inbound, exclude_cidrs),
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # A namespace with a ResourceQuota refuses pods whose containers set no requests.
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
    }
    return {
        **(
            {"metadata": {"annotations": {REWRITE_PROBES: ",".join(sorted(probes))}}}
            if probes
            else {}
        ),
        "spec": {
            "initContainers": [capture, sidecar],
            "volumes": [
                {
                    "name": CONFIG_VOLUME,
                    "configMap": {"name": sidecar_configmap_name(service)},
                },
                {
                    "name": CERTS_VOLUME,
                    "secret": {
                        "secretName": workload_secret_name(service_account),
                        "defaultMode": 0o444,  # the sidecar runs as 1337, not root
                    },
                },
            ],
        },
    }


JOB_PART = "job-injection"  # weft.dev/part of the PodTemplates deploy/40-jobs.yaml reads
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # the job controller puts it on a Job's pods
PLACEHOLDER = "weft-unused"


def job_injection_name(service: str) -> str:
    return f"{service}-weft-job"


def job_injection(
    namespace: str,
    *,
    service: str,
    spec: WorkloadSpec,
    config: pc.ProxyConfig,
    image: str,
    inbound: Mapping[str, int] | None = None,
    exclude_cidrs: Sequence[str] = (),
) -> Object:
    """A Service's injection for Jobs: a PodTemplate that deploy/40-jobs.yaml's admission
    policy reads as its parameter. A Job's pod template is immutable, so the policy adds
    `pod_injection`'s init containers and volumes, and annotation `weft.dev/injected-for`,
    to each Pod as the job controller creates it; the Job stays as its team wrote it.

    Which pods: those owned by a Job whose labels hold every label of `template.metadata`
    (the podSelector, and the job-name label when the intent names the Job), that run as
    `template.spec.serviceAccountName` (the Service's identity: a pod running as another
    account is left alone rather than handed this one's certificate), without hostNetwork and
    not injected already. A PodTemplate needs a container; `weft-unused` is never copied."""
    template = pod_injection(
        service=service, config=config, image=image, inbound=inbound, exclude_cidrs=exclude_cidrs
    )
    pod_labels = dict(spec.pod_selector)
    if spec.name is not None:
        pod_labels[JOB_NAME_LABEL] = spec.name
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {
            "name": job_injection_name(service),
            "namespace": namespace,
            "labels": labels(JOB_PART, service),
        },
        "template": {
            "metadata": {"labels": pod_labels, "annotations": {INJECTED: service}},
            "spec": {
                "serviceAccountName": config.workload.service_account,
                "containers": [{"name": PLACEHOLDER, "image": image}],
                **template["spec"],
            },
        },
    }


def release(kind: str, namespace: str, name: str) -> Object:
    """An apply of nothing: the server removes every field only Weft owned."""
    return {
        "apiVersion": WORKLOAD_API_VERSIONS[kind],
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
    }


def selects(spec: WorkloadSpec, workload: Mapping[str, Any]) -> bool:
    """Whether a live workload's pods are this Service's (its kind, name if named, labels)."""
    if workload.get("kind") != spec.kind:
        return False
    if spec.name is not None and workload["metadata"]["name"] != spec.name:
        return False
    pod_labels = pod_template(workload).get("metadata", {}).get("labels") or {}
    return bool(spec.pod_selector) and all(pod_labels.get(k) == v for k, v in spec.pod_selector)


def service_account_of(workload: Mapping[str, Any]) -> str:
    pod = pod_template(workload).get("spec", {})
    return str(pod.get("serviceAccountName") or pod.get("serviceAccount") or "default")


def stamped(body: Mapping[str, Any]) -> Object:
    """`body` with the digest of itself in annotation `weft.dev/applied`.

    Comparing desired with live objects field by field cannot see a field Weft stopped
    applying (a port or selector label removed from the intent): the live object still has it,
    which a subset test accepts. The digest changes whenever what Weft applies changes, so such
    an object is applied again, and server-side apply removes the fields Weft no longer sets."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
    meta = dict(body["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED: digest}
    return {**body, "metadata": meta}


PROTECTED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


def injection_problems(
    workload: Mapping[str, Any], namespace: Mapping[str, Any] | None, system_namespace: str
) -> list[str]:
    """Why injecting into this workload would break something; empty when it is safe."""
    meta = workload["metadata"]
    ref = f"{workload['kind']}/{meta['namespace']}/{meta['name']}"
    pod = pod_template(workload).get("spec", {})
    found = namespace_problems(ref, meta["namespace"], namespace, system_namespace)
    if pod.get("hostNetwork"):
        found.append(
            f"{ref} uses hostNetwork: its capture rules would redirect the node's own traffic"
        )
    return found


def namespace_problems(
    ref: str, name: str, namespace: Mapping[str, Any] | None, system_namespace: str
) -> list[str]:
    """Why pods in namespace `name` cannot be meshed (`ref` says whose, in the messages)."""
    found = []
    if name in (*PROTECTED_NAMESPACES, system_namespace):
        found.append(f"{ref}: Weft does not mesh workloads in {name}")
    level = ((namespace or {}).get("metadata", {}).get("labels") or {}).get(PSA_ENFORCE)
    if level in ("baseline", "restricted"):
        found.append(
            f"{ref}: namespace {name} enforces Pod Security '{level}', which "
            "refuses the capture init container (NET_ADMIN, NET_RAW); label it "
            f"{PSA_ENFORCE}=privileged, or leave its workloads out of the mesh"
        )
    return found


PROBE_KINDS = ("livenessProbe", "readinessProbe", "startupProbe")
PROBE_HANDLERS = ("httpGet", "tcpSocket", "grpc")
APP_PROBES_ENV = "WEFT_APP_PROBES"  # the sidecar's env: the app's own probes, as JSON
# On a pod template: the probes (`<container>/<kind>`, comma-separated) the admission policy
# in deploy/30-probes.yaml rewrites, in each pod as it is created, to ask the sidecar.
REWRITE_PROBES = "weft.dev/rewrite-probes"


def _probe_port(container: Mapping[str, Any], port: Any) -> int | None:
    """A probe's port as a number: named ports are the container's own `ports[].name`."""
    if isinstance(port, int):
        return port
    for p in container.get("ports") or ():
        if p.get("name") == port and isinstance(p.get("containerPort"), int):
            return int(p["containerPort"])
    return None


def app_probes(workload: Mapping[str, Any], ports: Sequence[int]) -> dict[str, Object]:
    """The app's HTTP, TCP and gRPC probes on meshed pod ports, by `<container>/<kind>`: each
    `{"probe": <as the app team wrote it>, "port": <its port as a number>}` (the sidecar
    cannot resolve a named port). Inbound capture would hand the kubelet's plaintext probe to
    the mTLS listener, which refuses it; these are the probes the sidecar runs instead."""
    pod = pod_template(workload).get("spec", {})
    found: dict[str, Object] = {}
    for container in pod.get("containers") or ():
        for kind in PROBE_KINDS:
            probe = container.get(kind) or {}
            handler = next((h for h in PROBE_HANDLERS if h in probe), None)
            if handler is None:
                continue  # exec (or none): runs in the container, no network, nothing to do
            if probe[handler].get("host"):
                continue  # probes another host, not this pod: capture never sees it
            port = _probe_port(container, probe[handler].get("port"))
            if port is not None and port in ports:
                found[f"{container['name']}/{kind}"] = {"probe": dict(probe), "port": port}
    return found
