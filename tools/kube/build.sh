#!/usr/bin/env bash
# Builds the real Kubernetes control plane Weft's tests run against — kube-apiserver and
# kube-controller-manager from k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server/v3 at the
# version that module graph selects — all pinned by this module's go.mod and go.sum, with
# CGO_ENABLED=0. Prints the directory holding the three binaries. The directory is cached outside
# the repository, keyed by the Kubernetes version and a digest of go.mod + go.sum, so a second run
# builds nothing. Build output goes to stderr; stdout is only the path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")"
digest="$(cat "$here/go.mod" "$here/go.sum" "$here/cmd/etcd/main.go" | sha256sum | cut -c1-12)"
bin_root="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
out="$bin_root/kube-$version-$digest"

if [[ ! -x "$out/kube-apiserver" ]]; then
    mkdir -p "$bin_root"
    exec 9>"$out.lock"
    flock 9  # one build at a time; a waiter finds what the first one made
    if [[ ! -x "$out/kube-apiserver" ]]; then
        echo "building kube-apiserver, kube-controller-manager and etcd $version into $out" \
            "(ten minutes or more the first time)" >&2
        tmp="$out.tmp.$$"
        trap 'rm -rf "$tmp"' EXIT
        mkdir -p "$tmp"
        start=$SECONDS
        (
            cd "$here"
            # -ldflags set the version the API server reports (it is "v0.0.0" otherwise, and
            # clients such as kubectl warn about the skew).
            pkg=k8s.io/component-base/version
            CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -buildvcs=false \
                -ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$version" | cut -d. -f2)" \
                -o "$tmp/" \
                k8s.io/kubernetes/cmd/kube-apiserver \
                k8s.io/kubernetes/cmd/kube-controller-manager \
                ./cmd/etcd
        ) >&2
        rm -rf "$out"
        mv "$tmp" "$out"
        echo "built the control plane $version in $((SECONDS - start)) s" >&2
    fi
fi
echo "$out"
