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
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opentelemetry import trace

from reconciler import identity
from reconciler.compiler import DesiredState
from reconciler.sidecar.binding import bind_endpoints, to_json
from reconciler.targets import Change, Plan
from reconciler.targets.local.ports import Ports
from reconciler.targets.local.supervisor import Spec, Supervisor

READY_TIMEOUT = 20.0
APP_LISTEN_TIMEOUT = 10.0
log = logging.getLogger("weft.local")


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

    def __init__(self, state_dir: Path) -> None:
        self.state = state_dir
        self.root = state_dir / "local"
        self.ports = Ports(self.root / "ports.json")
        self.store = identity.FileStore(state_dir)
        self.supervisor = Supervisor(self.root / "logs")
        self._planned: dict[str, dict[str, Unit]] = {}
        self._desired: DesiredState | None = None
        self.listening: dict[str, dict[str, str]] = {}

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
        units: dict[str, Unit] = {}
        self.listening = {}
        for key, config in configs.items():
            spec = desired.workloads[key]
            for inst in instances[key]:
                listeners = self._listeners(inst, config)
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
                admin = self.ports.addr(f"admin:{inst.ref}")
                sidecar = {"listeners": listeners, "certs": str(certs), "admin": admin}
                units[f"sidecar/{inst.ref}"] = Unit(
                    f"sidecar/{inst.ref}",
                    "sidecar",
                    _digest(json.dumps(sidecar, sort_keys=True)),
                    sidecar,
                )
                self.listening[inst.ref] = {
                    "admin": admin,
                    **{f"inbound {n}": a for n, a in listeners["inbound"].items()},
                    **{f"app {n}": a for n, a in listeners["app"].items()},
                    "outbound (HTTP_PROXY)": listeners["outboundHttp"],
                    **{f"tcp to {k}": a for k, a in listeners["outboundTcp"].items()},
                }
                if spec.command:
                    app = self._app(inst, config, listeners, spec.command, dict(spec.env))
                    units[f"app/{inst.ref}"] = Unit(
                        f"app/{inst.ref}", "app", _digest(json.dumps(app, sort_keys=True)), app
                    )
        return units

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
            dest = configs[(ns, svc)]
            port = next(
                p for p in dest["inbound"] if p["targetPort"] == cluster["endpoints"]["port"]
            )
            chosen = [i for i in instances[(ns, svc)] if cluster.get("subset") in (None, i.name)]
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
        return {
            "command": list(command),
            "env": {
                **env,
                "WEFT_SERVICE": f"{inst.namespace}/{inst.service}",
                "WEFT_INSTANCE": inst.name,
                "WEFT_PORTS": json.dumps(ports, sort_keys=True),
                "PORT": first["addr"].rsplit(":", 1)[1] if first else "",
                "HTTP_PROXY": f"http://{listeners['outboundHttp']}",
                "http_proxy": f"http://{listeners['outboundHttp']}",
                "WEFT_TCP": json.dumps(listeners["outboundTcp"], sort_keys=True),
            },
        }

    # ------------------------------------------------------------------ apply / prune

    def apply(self, plan: Plan) -> list[str]:
        units = self._planned.pop(plan.revision)
        self._ensure_identities()
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
        self.supervisor.start(
            unit.key,
            Spec(
                command=[
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
        self.supervisor.start(unit.key, Spec(unit.payload["command"], env, unit.fingerprint))
        # "Applied" should mean serving: wait for the app to listen on the ports it was given.
        # An app that listens elsewhere only costs this wait, and a warning.
        ports = json.loads(env["WEFT_PORTS"]).values()
        if not all(_listening(p["addr"]) for p in ports):
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


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _listening(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    deadline = time.monotonic() + APP_LISTEN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
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
