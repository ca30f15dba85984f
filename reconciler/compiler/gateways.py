"""A Gateway's listeners as fastpath reads them (`proxyconfig.GatewayListener`): certificates
as files, a certificate from a Kubernetes Secret named by the files a target mounts it as
(`proxyconfig.GATEWAY_SECRETS_DIR`), and the HTTP→HTTPS redirect spelled out."""

from __future__ import annotations

from reconciler.compiler import proxyconfig as pc
from reconciler.intent import model


def _secret_file(secret: str, name: str) -> str:
    return f"{pc.GATEWAY_SECRETS_DIR}/{secret}/{name}"


def _certificate(namespace: str, c: model.GatewayCertificate) -> pc.EdgeCertificate:
    if c.secret is None:
        return pc.EdgeCertificate(
            certificate_file=c.certificate_file or "", key_file=c.key_file or ""
        )
    return pc.EdgeCertificate(
        certificate_file=_secret_file(c.secret, "tls.crt"),
        key_file=_secret_file(c.secret, "tls.key"),
        secret=f"{namespace}/{c.secret}",
    )


def listener(
    gw: model.Gateway,
    listener: model.GatewayListener,
    authentication: pc.Authentication | None = None,
) -> pc.GatewayListener:
    ns, tls, redirect = gw.metadata.namespace, listener.tls, listener.redirect
    ca_secret = tls.client_ca_secret if tls else None
    ca_file = _secret_file(ca_secret, "ca.crt") if ca_secret else (tls and tls.client_ca_file)
    return pc.GatewayListener(
        name=listener.name,
        port=listener.port,
        protocol=listener.protocol,
        certificates=[_certificate(ns, c) for c in (tls.all_certificates if tls else [])],
        client_ca_file=ca_file or None,
        client_ca_secret=f"{ns}/{ca_secret}" if ca_secret else None,
        https_redirect=(
            pc.HttpsRedirect(port=redirect.port, status_code=redirect.status_code)
            if redirect
            else None
        ),
        authentication=authentication,
    )


def secrets(config: pc.ProxyConfig) -> list[str]:
    """The Secrets ("namespace/name") a gateway's config reads its certificates from."""
    found: set[str] = set()
    for gl in config.gateway or ():
        found |= {c.secret for c in gl.certificates if c.secret}
        if gl.client_ca_secret:
            found.add(gl.client_ca_secret)
    return sorted(found)
