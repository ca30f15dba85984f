#!/usr/bin/env bash
# Builds the real ORY Hydra OAuth2/OIDC server (github.com/ory/hydra/v2, pinned by this module's
# go.mod and go.sum) and prints the binary's path. The binary is cached outside the repository,
# keyed by Hydra's version and a digest of go.mod + go.sum, so a second run builds nothing.
# Build output goes to stderr; stdout is only the path.
#
# Hydra keeps its state in SQL; the tests run it with DSN=memory, which is SQLite in memory, so
# this is the one tool built with cgo (-tags sqlite, mattn/go-sqlite3). Nothing else in it needs
# C: no HSM support (that is the `hsm` tag), no extension loading.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "github.com/ory/hydra/v2" { print $2 }' "$here/go.mod")"
digest="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
bin_dir="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
bin="$bin_dir/hydra-$version-$digest"

if [[ ! -x "$bin" ]]; then
    mkdir -p "$bin_dir"
    exec 9>"$bin.lock"
    flock 9  # one build at a time; a waiter finds the binary the first one made
    if [[ ! -x "$bin" ]]; then
        echo "building hydra $version into $bin (a few minutes the first time)" >&2
        tmp="$bin.tmp.$$"
        trap 'rm -f "$tmp"' EXIT
        start=$SECONDS
        (
            cd "$here"
            CGO_ENABLED=1 GOFLAGS=-mod=readonly go build -trimpath -buildvcs=false \
                -tags sqlite,sqlite_omit_load_extension \
                -ldflags="-s -w -X github.com/ory/hydra/v2/driver/config.Version=$version" \
                -o "$tmp" github.com/ory/hydra/v2
        ) >&2
        mv "$tmp" "$bin"
        echo "built hydra $version in $((SECONDS - start)) s" >&2
    fi
fi
echo "$bin"
