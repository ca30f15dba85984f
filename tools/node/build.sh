#!/usr/bin/env bash
# Builds the real Kubernetes node programs Weft's node tests run — the kubelet and kube-scheduler
# from k8s.io/kubernetes at the same version as tools/kube's control plane — pinned by this
# module's go.mod and go.sum, with CGO_ENABLED=0. Prints the directory holding the two binaries.
# A module of its own (not tools/kube) so that adding the node leaves the control plane's cache key
# alone; both share Go's build cache, so the second of the two builds reuses most packages.
# The directory is cached outside the repository, keyed by the Kubernetes version and a digest of
# go.mod + go.sum, so a second run builds nothing. Build output goes to stderr; stdout is the path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3; exit }' "$here/go.mod")"
digest="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
bin_root="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
out="$bin_root/node-$version-$digest"

if [[ ! -x "$out/kubelet" ]]; then
    mkdir -p "$bin_root"
    exec 9>"$out.lock"
    flock 9  # one build at a time; a waiter finds what the first one made
    if [[ ! -x "$out/kubelet" ]]; then
        echo "building kubelet and kube-scheduler $version into $out" \
            "(several minutes the first time)" >&2
        tmp="$out.tmp.$$"
        trap 'rm -rf "$tmp"' EXIT
        mkdir -p "$tmp"
        start=$SECONDS
        (
            cd "$here"
            # -ldflags set the version the node reports, as tools/kube does for the API server
            # (a kubelet reporting v0.0.0 is older than any API server it talks to).
            pkg=k8s.io/component-base/version
            CGO_ENABLED=0 GOFLAGS=-mod=readonly nice -n 10 go build -trimpath -buildvcs=false \
                -ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$version" | cut -d. -f2)" \
                -o "$tmp/" \
                k8s.io/kubernetes/cmd/kubelet \
                k8s.io/kubernetes/cmd/kube-scheduler
        ) >&2
        rm -rf "$out"
        mv "$tmp" "$out"
        echo "built the node programs $version in $((SECONDS - start)) s" >&2
    fi
fi
echo "$out"
