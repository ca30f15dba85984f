#!/usr/bin/env bash
# Builds the gRPC benchmark's two programs, pinned by this module's go.mod and go.sum: ghz
# (github.com/bojand/ghz/cmd/ghz, the gRPC load generator) and server/ (a grpc-go server
# answering grpc.health.v1.Health/Check, the backend). Prints their paths, ghz's first, one per
# line. Both are cached outside the repository, keyed by ghz's version and a digest of
# go.mod + go.sum + server/main.go, so a second run builds nothing. Build output goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "github.com/bojand/ghz" { print $2 }' "$here/go.mod")"
digest="$(cat "$here/go.mod" "$here/go.sum" "$here/server/main.go" | sha256sum | cut -c1-12)"
bin_dir="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
ghz="$bin_dir/ghz-$version-$digest"
server="$bin_dir/grpc-health-server-$digest"

if [[ ! -x "$ghz" || ! -x "$server" ]]; then
    mkdir -p "$bin_dir"
    exec 9>"$ghz.lock"
    flock 9  # one build at a time; a waiter finds the binaries the first one made
    if [[ ! -x "$ghz" || ! -x "$server" ]]; then
        echo "building ghz $version and the gRPC health server into $bin_dir" >&2
        trap 'rm -f "$ghz.tmp.$$" "$server.tmp.$$"' EXIT
        start=$SECONDS
        (
            cd "$here"
            export CGO_ENABLED=0 GOFLAGS=-mod=readonly
            go build -trimpath -buildvcs=false -ldflags="-s -w" -o "$ghz.tmp.$$" \
                github.com/bojand/ghz/cmd/ghz
            go build -trimpath -buildvcs=false -ldflags="-s -w" -o "$server.tmp.$$" ./server
        ) >&2
        mv "$ghz.tmp.$$" "$ghz"
        mv "$server.tmp.$$" "$server"
        echo "built ghz $version and the gRPC health server in $((SECONDS - start)) s" >&2
    fi
fi
echo "$ghz"
echo "$server"
