#!/usr/bin/env bash
# Builds CoreDNS (github.com/coredns/coredns, with its standard plugins, kubernetes among them),
# the cluster DNS of the node tests, pinned by this module's go.mod and go.sum, with
# CGO_ENABLED=0. Prints the directory holding the binary; cached outside the repository, keyed by
# the version and a digest of go.mod + go.sum, so a second run builds nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" { print $3; exit }' "$here/go.mod")"
digest="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
bin_root="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
out="$bin_root/coredns-$version-$digest"

if [[ ! -x "$out/coredns" ]]; then
    mkdir -p "$bin_root"
    exec 9>"$out.lock"
    flock 9
    if [[ ! -x "$out/coredns" ]]; then
        echo "building CoreDNS $version into $out (a few minutes the first time)" >&2
        tmp="$out.tmp.$$"
        trap 'rm -rf "$tmp"' EXIT
        mkdir -p "$tmp"
        start=$SECONDS
        (cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=readonly nice -n 10 go build -trimpath \
            -buildvcs=false -ldflags="-s -w" -o "$tmp/coredns" github.com/coredns/coredns) >&2
        rm -rf "$out"
        mv "$tmp" "$out"
        echo "built CoreDNS $version in $((SECONDS - start)) s" >&2
    fi
fi
echo "$out"
