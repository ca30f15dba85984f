#!/usr/bin/env bash
# Builds kube-network-policies (sigs.k8s.io/kube-network-policies/cmd, the SIG Network agent that
# enforces networking.k8s.io/v1 NetworkPolicy with nftables and NFQUEUE), the NetworkPolicy agent
# of the node tests, pinned by this module's go.mod and go.sum, with CGO_ENABLED=0. Prints the
# directory holding the binary; cached outside the repository, keyed by the version and a digest
# of go.mod + go.sum, so a second run builds nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" && $2 == "sigs.k8s.io/kube-network-policies" { print $3; exit }' "$here/go.mod")"
digest="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
bin_root="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
out="$bin_root/kube-network-policies-$version-$digest"

if [[ ! -x "$out/kube-network-policies" ]]; then
    mkdir -p "$bin_root"
    exec 9>"$out.lock"
    flock 9
    if [[ ! -x "$out/kube-network-policies" ]]; then
        echo "building kube-network-policies $version into $out (a few minutes the first time)" >&2
        tmp="$out.tmp.$$"
        trap 'rm -rf "$tmp"' EXIT
        mkdir -p "$tmp"
        start=$SECONDS
        (cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=readonly nice -n 10 go build -trimpath \
            -buildvcs=false -ldflags="-s -w" -o "$tmp/kube-network-policies" \
            sigs.k8s.io/kube-network-policies/cmd) >&2
        rm -rf "$out"
        mv "$tmp" "$out"
        echo "built kube-network-policies $version in $((SECONDS - start)) s" >&2
    fi
fi
echo "$out"
