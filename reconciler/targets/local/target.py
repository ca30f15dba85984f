"""`LocalTarget`: every Service as an app process and a `weft sidecar` process on loopback.

Objects it manages, by key:
- `config/<ns>/<svc>/<instance>`: the sidecar's bound ProxyConfig file. A policy or route
  change only rewrites this file; the sidecar reloads it without a restart or a dropped request.
- `sidecar/<ns>/<svc>/<instance>`: the sidecar process (restarted only if its listeners,
  certificates folder or admin address change).
- `app/<ns>/<svc>/<instance>`: the Service's `local.command`, started once its sidecar is ready,
  with `HTTP_PROXY` pointing at the sidecar so apps need no mesh knowledge.

A Service with subsets runs one instance per subset (so canary weights are real); otherwise one
instance, `default`. Identities are issued into the state directory by `reconciler.identity`.

With `isolation="netns"` (root only) each instance gets its own network namespace on a bridge
(`netns`): the app runs there with no proxy settings, its sidecar as UID 1337 beside it, and
`weft-capture.sh` sends the app's TCP through the sidecar. Each Service has a virtual address
that every namespace's /etc/hosts names; the sidecars' `originalDestinations` map it (and each
port) to the upstream, and clusters are bound to the instances' addresses. Nothing leaves the
bridge (`netns`), so an egress gateway runs in the root namespace, at an address of its own on
the bridge where callers' sidecars reach its mesh-facing ports.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opentelemetry import trace

from reconciler import capture, hostport, identity
from reconciler.compiler import DesiredState
from reconciler.targets import Change, Plan
from reconciler.targets.local import netns
from reconciler.targets.local.binding import bind_endpoints, to_json
from reconciler.targets.local.ports import Ports
from reconciler.targets.local.supervisor import Spec, Supervisor

READY_TIMEOUT = 20.0
APP_LISTEN_TIMEOUT = 10.0
log = logging.getLogger("weft.local")

ISOLATIONS = ("none", "netns")
# Inside a namespace ports are the instance's own, so they are fixed, not allocated.
ADMIN_PORT = 15020
INBOUND_FIRST_PORT = 15100  # the mTLS listener of the i-th inbound port: 15100 + i
# The sidecar reads root's 0600 certificate files with this capability and nothing else.
SIDECAR_CAPS = ("dac_read_search",)
GATEWAY_CAPS = (*SIDECAR_CAPS, "net_bind_service")
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Instance:
    namespace: str
    service: str
    name: str  # subset, or "default"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.service}/{self.name}"


@dataclasses.dataclass
class Unit:
    key: str
    kind: str  # config | sidecar | app
    fingerprint: str
    payload: Any


class LocalTarget:
    name = "local"

    def __init__(self, state_dir: Path, isolation: str = "none") -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, not {isolation!r}")
        self.state = state_dir
        self.root = state_dir / "local"
        self.ports = Ports(self.root / "ports.json")
        self.store = identity.FileStore(state_dir)
        self._planned: dict[str, dict[str, Unit]] = {}
        self._desired: DesiredState | None = None
        self.listening: dict[str, dict[str, str]] = {}
        self.network: netns.Network | None = None
        self._namespaces: dict[str, netns.Host] = {}  # made this run, by instance ref
        self._hosts_files: dict[str, dict[str, str]] = {}  # netns -> /etc/hosts names
        self._egress_listeners: dict[str, str] = {}  # "<gateway ref>:<port name>" -> address
        if isolation == "netns":
            netns.check_tools()
            tag = netns.tag_for(state_dir)
            # A crashed run left its namespaces, bridge and rules: remove them before anything.
            if stale := netns.remove_stale(tag):
                log.warning("removed %d network namespaces left by an earlier run", len(stale))
            self.addresses = netns.Addresses(self.root / "netns.json", tag)
            self.network = self.addresses.network()
            self.network.create()
            self.network.confine()
        self.supervisor = Supervisor(self.root / "logs")

    # ------------------------------------------------------------------ observe / plan

    def observe(self) -> Mapping[str, str]:
        found = dict(self.supervisor.fingerprints())
        base = self.root / "workloads"
        if base.is_dir():
            for path in base.glob("*/*/*/proxyconfig.json"):
                ns, svc, inst = path.parts[-4:-1]
                found[f"config/{ns}/{svc}/{inst}"] = _digest(path.read_text())
        return found

    def plan(self, desired: DesiredState, observed: Mapping[str, str]) -> Plan:
        units = self._units(desired)
        self._planned[desired.revision] = units
        self._desired = desired
        changes = []
        for key, unit in units.items():
            if key not in observed:
                changes.append(Change("create", key))
            elif observed[key] != unit.fingerprint:
                changes.append(Change("update", key))
        changes += [Change("delete", key) for key in observed if key not in units]
        return Plan(desired.revision, tuple(sorted(changes, key=lambda c: c.key)))

    def _instances(self, desired: DesiredState) -> dict[tuple[str, str], list[Instance]]:
        return {
            (ns, svc): [Instance(ns, svc, i) for i in spec.instances]
            for (ns, svc), spec in desired.workloads.items()
        }

    def _units(self, desired: DesiredState) -> dict[str, Unit]:
        instances = self._instances(desired)
        configs = {key: c.as_dict() for key, c in desired.proxy_configs.items()}
        gateways = {key: g.as_dict() for key, g in desired.gateway_configs.items()}
        # Where each egress gateway's mesh-facing port listens, by "<gateway ref>:<port name>":
        # callers' clusters are bound to it.
        self._egress_listeners = {
            f"{Instance(ns, name, 'gateway').ref}:{p['name']}": address
            for (ns, name), config in gateways.items()
            if config["inbound"]
            for p, address in zip(
                config["inbound"],
                self._egress_inbound(Instance(ns, name, "gateway"), config).values(),
                strict=True,
            )
        }
        units: dict[str, Unit] = {}
        self.listening = {}
        self._hosts_files = {}
        for key, config in configs.items():
            spec = desired.workloads[key]
            for inst in instances[key]:
                listeners = (
                    self._captured(inst, config, configs)
                    if self.network
                    else self._listeners(inst, config)
                )
                bound = bind_endpoints(config, self._endpoints(config, configs, instances))
                text = to_json(bound)
                units[f"config/{inst.ref}"] = Unit(
                    f"config/{inst.ref}", "config", _digest(text), text
                )
                certs = (
                    self.store.root
                    / "workloads"
                    / inst.namespace
                    / config["workload"]["serviceAccount"]
                )
                # In a namespace, the admin port is on its address, where this process (and
                # a user) can reach it.
                admin = (
                    f"{self._host(inst).address}:{ADMIN_PORT}"
                    if self.network
                    else self.ports.addr(f"admin:{inst.ref}")
                )
                sidecar: dict[str, Any] = {
                    "listeners": listeners,
                    "certs": str(certs),
                    "admin": admin,
                }
                if self.network:
                    host = self._host(inst)
                    sidecar["netns"] = dataclasses.asdict(host)
                    sidecar["capture"] = {
                        p["targetPort"]: hostport.parse(listeners["inbound"][p["name"]]).port
                        for p in config["inbound"]
                    }
                    self._hosts_files[host.netns] = self._names(inst, config, configs)
                units[f"sidecar/{inst.ref}"] = Unit(
                    f"sidecar/{inst.ref}",
                    "sidecar",
                    _digest(json.dumps(sidecar, sort_keys=True)),
                    sidecar,
                )
                self.listening[inst.ref] = (
                    {
                        "netns": sidecar["netns"]["netns"],
                        "address": sidecar["netns"]["address"],
                        "admin": admin,
                    }
                    if self.network
                    else {
                        "admin": admin,
                        **{f"inbound {n}": a for n, a in listeners["inbound"].items()},
                        **{f"app {n}": a for n, a in listeners["app"].items()},
                        "outbound (HTTP_PROXY)": listeners["outboundHttp"],
                        **{f"tcp to {k}": a for k, a in listeners["outboundTcp"].items()},
                    }
                )
                if spec.command:
                    app = self._app(inst, config, listeners, spec.command, dict(spec.env))
                    units[f"app/{inst.ref}"] = Unit(
                        f"app/{inst.ref}", "app", _digest(json.dumps(app, sort_keys=True)), app
                    )
        for (ns, name), gateway in gateways.items():
            units.update(
                self._gateway_units(Instance(ns, name, "gateway"), gateway, configs, instances)
            )
        return units

    def _egress_inbound(self, inst: Instance, config: dict[str, Any]) -> dict[str, str]:
        """An egress gateway's mesh-facing listeners, by port name: on loopback, or under netns
        isolation at the gateway's own address on the bridge (fixed ports, as in a namespace)."""
        if self.network:
            address = self._host(inst).address
            return {
                p["name"]: f"{address}:{INBOUND_FIRST_PORT + i}"
                for i, p in enumerate(config["inbound"])
            }
        return {
            p["name"]: self.ports.addr(f"inbound:{inst.ref}:{p['name']}") for p in config["inbound"]
        }

    def _gateway_units(
        self,
        inst: Instance,
        config: dict[str, Any],
        configs: dict[tuple[str, str], dict[str, Any]],
        instances: dict[tuple[str, str], list[Instance]],
    ) -> dict[str, Unit]:
        """A gateway: fastpath with no app. An ingress gateway listens on the ports the intent
        names: on loopback (what a local user points curl at), or under netns isolation at its
        own namespace's address on the bridge (the host reaches it; nothing is captured). An
        egress gateway's mesh-facing ports hand each request to its own outbound listener on
        loopback; under netns isolation it runs in the root namespace, the one place traffic
        may leave from, and its mesh-facing ports are at its address on the bridge."""
        secrets = [
            c["secret"]
            for g in config["gateway"]
            for c in g.get("certificates", ())
            if "secret" in c
        ] + [g["clientCaSecret"] for g in config["gateway"] if "clientCaSecret" in g]
        if secrets:
            log.error(
                "Gateway %s/%s reads Secret %s: Secrets are the Kubernetes target's certificate"
                " source; on the local runtime name certificateFile/keyFile (clientCaFile)",
                inst.namespace,
                inst.service,
                ", ".join(secrets),
            )
            return {}
        egress = bool(config["inbound"])
        address = self._host(inst).address if self.network else "127.0.0.1"
        listeners: dict[str, Any] = {
            "gateway": {g["name"]: f"{address}:{g['port']}" for g in config["gateway"]}
        }
        if egress:  # mesh-facing ports, each handed to its outbound listener
            # On loopback even under netns: only its own mesh-facing side may reach it, never a
            # namespace (that would skip the allowedFrom check).
            outbound = self.ports.addr(f"outbound:{inst.ref}")
            listeners["inbound"] = self._egress_inbound(inst, config)
            listeners["app"] = {p["name"]: outbound for p in config["inbound"]}
            listeners["outboundHttp"] = outbound
        text = to_json(bind_endpoints(config, self._endpoints(config, configs, instances)))
        certs = (
            self.store.root / "workloads" / inst.namespace / config["workload"]["serviceAccount"]
        )
        admin = f"{address}:{ADMIN_PORT}" if self.network else self.ports.addr(f"admin:{inst.ref}")
        sidecar: dict[str, Any] = {"listeners": listeners, "certs": str(certs), "admin": admin}
        if self.network and egress:
            sidecar["bridgeAddress"] = address
        elif self.network:
            host = self._host(inst)
            sidecar["netns"] = dataclasses.asdict(host)
            # Its own name only (the admin server looks it up): it calls endpoints by address.
            self._hosts_files[host.netns] = {
                f"{inst.name}.{inst.service}.{inst.namespace}": host.address
            }
        self.listening[inst.ref] = {
            "admin": admin,
            **({"netns": sidecar["netns"]["netns"]} if "netns" in sidecar else {}),
            **({"address (root namespace)": address} if "bridgeAddress" in sidecar else {}),
            **{f"gateway {n}": a for n, a in listeners["gateway"].items()},
            **{f"inbound {n}": a for n, a in listeners.get("inbound", {}).items()},
        }
        return {
            f"config/{inst.ref}": Unit(f"config/{inst.ref}", "config", _digest(text), text),
            f"sidecar/{inst.ref}": Unit(
                f"sidecar/{inst.ref}",
                "sidecar",
                _digest(json.dumps(sidecar, sort_keys=True)),
                sidecar,
            ),
        }

    def _listeners(self, inst: Instance, config: dict[str, Any]) -> dict[str, Any]:
        out = config["outbound"]
        tcp = {
            f"{t['service']}:{t['port']}": self.ports.addr(
                f"tcp:{inst.ref}:{t['service']}:{t['port']}"
            )
            for t in out["tcp"]
        }
        for e in out["egress"]:
            if e["protocol"] != "http":
                key = f"{e['host']}:{e['port']}"
                tcp[key] = self.ports.addr(f"egress:{inst.ref}:{key}")
        return {
            "inbound": {
                p["name"]: self.ports.addr(f"inbound:{inst.ref}:{p['name']}")
                for p in config["inbound"]
            },
            "app": {
                p["name"]: self.ports.addr(f"app:{inst.ref}:{p['name']}") for p in config["inbound"]
            },
            "outboundHttp": self.ports.addr(f"outbound:{inst.ref}"),
            "outboundTcp": tcp,
        }

    # ------------------------------------------------------------------ netns isolation

    def _host(self, inst: Instance) -> netns.Host:
        assert self.network is not None
        index = self.addresses.host(inst.ref)
        return netns.Host(self.network.netns_name(index), self.network.address(index))

    def _vip(self, service: str) -> str:
        """The virtual address of a Service ("ns/name"), as a ClusterIP: callers use it, capture
        turns it into the upstream, nothing listens on it."""
        assert self.network is not None
        return self.network.address(self.addresses.service(service))

    def _captured(
        self,
        inst: Instance,
        config: dict[str, Any],
        configs: dict[tuple[str, str], dict[str, Any]],
    ) -> dict[str, Any]:
        """Listeners inside a namespace. Every Service port of the mesh is an original
        destination, reachable or not: whether it may be called is the config's business, so a
        policy change never changes listeners (which would restart the sidecar)."""
        destinations = {
            f"{self._vip(f'{ns}/{svc}')}:{p['port']}": f"{ns}/{svc}:{p['port']}"
            for (ns, svc), other in configs.items()
            for p in other["inbound"]
        }
        return {
            "inbound": {
                p["name"]: f"0.0.0.0:{INBOUND_FIRST_PORT + i}"
                for i, p in enumerate(config["inbound"])
            },
            "app": {p["name"]: f"127.0.0.1:{p['targetPort']}" for p in config["inbound"]},
            "outboundCapture": f"127.0.0.1:{capture.CAPTURE_PORT}",
            "originalDestinations": dict(sorted(destinations.items())),
        }

    def _names(
        self,
        inst: Instance,
        config: dict[str, Any],
        configs: dict[tuple[str, str], dict[str, Any]],
    ) -> dict[str, str]:
        """/etc/hosts of an instance's namespace: every Service by `name.namespace` (and
        `name.namespace.svc`; plain `name` in its own namespace), plus every hostname its
        config routes, so callers use the names they would in a cluster."""
        # Its own address too: the admin server looks its name up (http.server's getfqdn),
        # and the namespace has no DNS server to ask, which would cost two 5 s timeouts.
        names = {f"{inst.name}.{inst.service}.{inst.namespace}": self._host(inst).address}
        for ns, svc in configs:
            vip = self._vip(f"{ns}/{svc}")
            names[f"{svc}.{ns}"] = names[f"{svc}.{ns}.svc"] = vip
            if ns == inst.namespace:
                names[svc] = vip
        for host in config["outbound"]["http"]:
            for name in host["hostnames"]:
                names[name] = self._vip(host["service"])
        return names

    def _namespace(self, host: dict[str, str], ref: str) -> netns.Host:
        """The instance's namespace, made (with its hosts file) the first time it is needed."""
        assert self.network is not None
        made = self._namespaces.get(ref)
        if made is None:
            index = self.addresses.host(ref)
            made = self.network.add(index, self._hosts_files.get(host["netns"], {}))
            self._namespaces[ref] = made
        return made

    def _endpoints(
        self,
        config: dict[str, Any],
        configs: dict[tuple[str, str], dict[str, Any]],
        instances: dict[tuple[str, str], list[Instance]],
    ) -> dict[str, list[str]]:
        """Each cluster's static endpoints: the inbound listeners of the instances behind it."""
        endpoints: dict[str, list[str]] = {}
        for cluster in config["outbound"]["clusters"]:
            ns, svc = cluster["service"].split("/")
            if (ns, svc) not in configs:  # an egress gateway: its port for this destination port
                gateway = Instance(ns, svc, "gateway").ref
                port_name = f"egress-{cluster['endpoints']['port']}"
                if listener := self._egress_listeners.get(f"{gateway}:{port_name}"):
                    endpoints[cluster["name"]] = [listener]
                continue
            dest = configs[(ns, svc)]
            port = next(
                p for p in dest["inbound"] if p["targetPort"] == cluster["endpoints"]["port"]
            )
            chosen = [i for i in instances[(ns, svc)] if cluster.get("subset") in (None, i.name)]
            if self.network:
                # The pod port at the instance's address: its capture hands it to the sidecar.
                endpoints[cluster["name"]] = [
                    f"{self._host(i).address}:{port['targetPort']}" for i in chosen
                ]
                continue
            endpoints[cluster["name"]] = [
                self.ports.addr(f"inbound:{i.ref}:{port['name']}") for i in chosen
            ]
        return endpoints

    def _app(
        self,
        inst: Instance,
        config: dict[str, Any],
        listeners: dict[str, Any],
        command: tuple[str, ...],
        env: dict[str, str],
    ) -> dict[str, Any]:
        ports = {
            p["name"]: {"addr": listeners["app"][p["name"]], "protocol": p["protocol"]}
            for p in config["inbound"]
        }
        first = next(iter(ports.values()), None)
        if self.network:
            # Nothing of the mesh: the app listens on its own ports and calls services by name.
            return {
                "command": list(command),
                "netns": self._host(inst).netns,
                "env": {
                    **env,
                    "WEFT_SERVICE": f"{inst.namespace}/{inst.service}",
                    "WEFT_INSTANCE": inst.name,
                    "WEFT_PORTS": json.dumps(ports, sort_keys=True),
                    "PORT": str(hostport.parse(first["addr"]).port) if first else "",
                },
            }
        return {
            "command": list(command),
            "env": {
                **env,
                "WEFT_SERVICE": f"{inst.namespace}/{inst.service}",
                "WEFT_INSTANCE": inst.name,
                "WEFT_PORTS": json.dumps(ports, sort_keys=True),
                "PORT": str(hostport.parse(first["addr"]).port) if first else "",
                "HTTP_PROXY": f"http://{listeners['outboundHttp']}",
                "http_proxy": f"http://{listeners['outboundHttp']}",
                "WEFT_TCP": json.dumps(listeners["outboundTcp"], sort_keys=True),
            },
        }

    # ------------------------------------------------------------------ apply / prune

    def apply(self, plan: Plan) -> list[str]:
        units = self._planned.pop(plan.revision)
        self._ensure_identities()
        for made in self._namespaces.values():  # Services may have come or gone
            netns.write_hosts(made.netns, self._hosts_files.get(made.netns, {}))
        applied: list[str] = []
        creates = {c.key for c in plan.of("create", "update")}
        # Configs first (a running sidecar reloads them), then sidecars, then apps.
        tracer = trace.get_tracer("weft.target.local")
        for kind in ("config", "sidecar", "app"):
            for key in sorted(k for k in creates if units[k].kind == kind):
                with tracer.start_as_current_span(f"apply {key}"):
                    getattr(self, f"_apply_{kind}")(units[key])
                applied.append(key)
        return applied

    def _ensure_identities(self) -> None:
        desired = self._desired
        if desired is None:
            return
        if self.store.read_state() is None:
            identity.ca.init(self.store, desired.trust_domain, _now())
        identity.ensure(
            self.store,
            desired.identities,
            trust_domain=desired.trust_domain,
            lifetime=datetime.timedelta(milliseconds=desired.certificate_lifetime_ms),
            now=_now(),
        )

    def _apply_config(self, unit: Unit) -> None:
        _, ns, svc, inst = unit.key.split("/")
        path = self.root / "workloads" / ns / svc / inst / "proxyconfig.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".proxyconfig.")
        with os.fdopen(fd, "w") as f:
            f.write(unit.payload)
        os.replace(tmp, path)

    def _apply_sidecar(self, unit: Unit) -> None:
        _, ns, svc, inst = unit.key.split("/")
        folder = self.root / "workloads" / ns / svc / inst
        (folder / "listeners.json").write_text(json.dumps(unit.payload["listeners"], indent=2))
        self.supervisor.stop(unit.key)
        prefix: list[str] = []
        if "bridgeAddress" in unit.payload:  # an egress gateway, in the root namespace
            assert self.network is not None
            self.network.add_address(unit.payload["bridgeAddress"])
            prefix = netns.unprivileged(capture.PROXY_UID, SIDECAR_CAPS, pdeathsig=True)
        elif "netns" in unit.payload:
            host = self._namespace(unit.payload["netns"], f"{ns}/{svc}/{inst}")
            if "capture" in unit.payload:  # a gateway has no app whose traffic to capture
                inbound = {int(k): v for k, v in unit.payload["capture"].items()}
                subprocess.run(
                    [*host.exec_prefix(), *capture.apply_command(inbound=inbound)],
                    check=True,
                    capture_output=True,
                )
            # Its own UID, so capture lets its traffic out; the parent-death signal again,
            # because changing the UID clears it.
            # A gateway listens on the ports clients use, 443 and 80 among them.
            caps = SIDECAR_CAPS if "capture" in unit.payload else GATEWAY_CAPS
            prefix = host.exec_prefix(uid=capture.PROXY_UID, caps=caps, pdeathsig=True)
        self.supervisor.start(
            unit.key,
            Spec(
                command=[
                    *prefix,
                    sys.executable,
                    "-m",
                    "reconciler.sidecar",
                    "--config",
                    str(folder / "proxyconfig.json"),
                    "--certs",
                    unit.payload["certs"],
                    "--listeners",
                    str(folder / "listeners.json"),
                    "--admin",
                    unit.payload["admin"],
                ],
                env={},
                fingerprint=unit.fingerprint,
            ),
        )
        _wait_ready(f"http://{unit.payload['admin']}/ready", unit.key)

    def _apply_app(self, unit: Unit) -> None:
        self.supervisor.stop(unit.key)
        bin_dir = str(Path(sys.executable).parent)
        env = dict(unit.payload["env"])
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"  # `weft` for demo apps
        where = unit.payload.get("netns")
        command = unit.payload["command"]
        if where is not None:
            command = ["ip", "netns", "exec", where, *command]
        self.supervisor.start(
            unit.key,
            Spec(command, env, unit.fingerprint, unset=PROXY_VARIABLES if where else ()),
        )
        # "Applied" should mean serving: wait for the app to listen on the ports it was given.
        # An app that listens elsewhere only costs this wait, and a warning.
        ports = json.loads(env["WEFT_PORTS"]).values()
        if not all(_listening(p["addr"], where) for p in ports):
            log.warning(
                "%s is not listening on its ports after %.0f s", unit.key, APP_LISTEN_TIMEOUT
            )

    def prune(self, plan: Plan) -> list[str]:
        removed = []
        deletes = [c.key for c in plan.of("delete")]
        for prefix in ("app/", "sidecar/", "config/"):
            for key in sorted(k for k in deletes if k.startswith(prefix)):
                if prefix == "config/":
                    _, ns, svc, inst = key.split("/")
                    (self.root / "workloads" / ns / svc / inst / "proxyconfig.json").unlink(
                        missing_ok=True
                    )
                else:
                    self.supervisor.stop(key)
                removed.append(key)
        return removed

    def maintain(self) -> None:
        """Renew certificates that are due; sidecars pick the files up themselves."""
        self._ensure_identities()

    def report(self, status: Mapping[str, Any]) -> None:
        """The status file in the state directory is where `weft status` looks; nothing more."""

    def close(self) -> None:
        self.supervisor.close()
        if self.network is not None:
            # The namespaces take their iptables rules and veths with them.
            self.network.remove()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _listening(addr: str, where: str | None = None) -> bool:
    """Whether something listens on `addr`, in network namespace `where` if given (asked
    of `ss`, since this process cannot connect to another namespace's loopback)."""
    host, port = hostport.parse(addr)
    deadline = time.monotonic() + APP_LISTEN_TIMEOUT
    while time.monotonic() < deadline:
        if where is not None:
            out = subprocess.run(
                ["ss", "-N", where, "-Hltn", f"sport = :{port}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if out.strip():
                return True
            time.sleep(0.05)
            continue
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _wait_ready(url: str, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {READY_TIMEOUT:.0f} s")
