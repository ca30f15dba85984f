#!/usr/bin/env bash
# Builds Weft's own image (the reconciler, the sidecar and the capture init container) from
# deploy/Dockerfile with buildah, with no Docker engine and no registry, and prints the directory
# holding it as a docker-archive tarball, weft.tar (localhost/weft/weft:dev), for
# `ctr images import`. Two things differ from a `docker build` elsewhere, both outside the file:
# - the Dockerfile's build stage fetches rustup from the internet, which this machine cannot
#   reach: the wheel that stage makes (`maturin build --release`) is built here instead and
#   given to buildah as that stage (`--build-context build=DIR`, DIR/wheels/*.whl), so buildah
#   skips the stage and the final stage's `COPY --from=build /wheels` takes this wheel;
# - FROM python:3.11-slim-bookworm names a Docker Hub image: the local store gets an image of
#   that name made from Debian's own python3 3.11 (tools/node/images.sh's base.tar, with
#   `python` linked to python3 and Debian's pip lock removed, as the upstream image has them).
# The final stage's apt-get and pip run on the host's network, with the host's CA bundle and a
# pip.conf naming it mounted for RUN only (they are not in the image).
# Cached by a digest of the wheel, the Dockerfile, the base image and this script.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin_root="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
maturin="${MATURIN:-$root/.venv/bin/maturin}"
images="$("$here/images.sh")"
host_ca=/etc/ssl/certs/ca-certificates.crt

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ctx/wheels"
(cd "$root" && nice -n 10 "$maturin" build --release --quiet --out "$work/ctx/wheels") >&2
# The wheel's members, not the zip, and not its SBOM (with RECORD, which hashes it): those
# carry the build's time and a random serial, so would make every build look new.
members="$(python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = [n for n in sorted(z.namelist()) if "/sboms/" not in n and not n.endswith("/RECORD")]
sys.stdout.buffer.write(b"".join(n.encode() + z.read(n) for n in names))' "$work"/ctx/wheels/*.whl \
    | sha256sum)"
digest="$( { echo "$members"; cat "$root/deploy/Dockerfile" "${BASH_SOURCE[0]}"; } \
    | sha256sum | cut -c1-12)"
out="$bin_root/weft-image-$(basename "$images")-$digest"

if [[ ! -f "$out/weft.tar" ]]; then
    exec 9>"$out.lock"
    flock 9
    if [[ ! -f "$out/weft.tar" ]]; then
        echo "building localhost/weft/weft:dev from deploy/Dockerfile into $out" >&2
        start=$SECONDS
        buildah=(buildah --root "$work/store" --runroot "$work/run" --storage-driver vfs)
        trap '"${buildah[@]}" rm --all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
        "${buildah[@]}" pull -q "docker-archive:$images/base.tar" >&2
        c="$("${buildah[@]}" from --pull=never localhost/weft/debian:bookworm)"
        "${buildah[@]}" run --runtime /usr/sbin/runc --network host "$c" -- sh -c \
            'ln -sf python3 /usr/bin/python && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED' >&2
        "${buildah[@]}" commit -q "$c" docker.io/library/python:3.11-slim-bookworm >&2
        printf '[global]\ncert = /run/weft-host-ca.crt\n' > "$work/pip.conf"
        (cd "$root" && nice -n 10 "${buildah[@]}" bud --runtime /usr/sbin/runc --pull=never \
            --network host --build-context "build=$work/ctx" \
            --volume "$host_ca:/run/weft-host-ca.crt:ro" --volume "$work/pip.conf:/etc/pip.conf:ro" \
            -f deploy/Dockerfile -t localhost/weft/weft:dev .) >&2
        mkdir -p "$out.tmp"
        "${buildah[@]}" push -q localhost/weft/weft:dev \
            "docker-archive:$out.tmp/weft.tar:localhost/weft/weft:dev" >&2
        rm -rf "$out"
        mv "$out.tmp" "$out"
        echo "built localhost/weft/weft:dev in $((SECONDS - start)) s" >&2
    fi
fi
echo "$out"
