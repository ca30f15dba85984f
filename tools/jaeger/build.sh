#!/usr/bin/env bash
# Builds the real Jaeger v2 all-in-one (github.com/jaegertracing/jaeger/cmd/jaeger, pinned by
# this module's go.mod and go.sum) and prints the binary's path. The binary is cached outside
# the repository, keyed by Jaeger's version and a digest of go.mod + go.sum, so a second run
# builds nothing. Build output goes to stderr; stdout is only the path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "github.com/jaegertracing/jaeger" { print $2 }' "$here/go.mod")"
digest="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
bin_dir="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
bin="$bin_dir/jaeger-$version-$digest"

if [[ ! -x "$bin" ]]; then
    mkdir -p "$bin_dir"
    exec 9>"$bin.lock"
    flock 9  # one build at a time; a waiter finds the binary the first one made
    if [[ ! -x "$bin" ]]; then
        echo "building jaeger $version into $bin (a few minutes the first time)" >&2
        tmp="$bin.tmp.$$"
        trap 'rm -f "$tmp"' EXIT
        start=$SECONDS
        (
            cd "$here"
            CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -buildvcs=false \
                -ldflags="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$version" \
                -o "$tmp" github.com/jaegertracing/jaeger/cmd/jaeger
        ) >&2
        mv "$tmp" "$bin"
        echo "built jaeger $version in $((SECONDS - start)) s" >&2
    fi
fi
echo "$bin"
