#!/usr/bin/env bash
# Builds the container images Weft's node tests run, with no Docker engine and no registry, and
# prints the directory holding them as docker-archive tarballs (what `ctr images import` reads):
#   pause.tar  localhost/weft/pause:<k8s version>  the Kubernetes pause program, compiled static
#              from build/pause/linux/pause.c of the same k8s.io/kubernetes module as the kubelet
#   base.tar   localhost/weft/debian:bookworm      Debian bookworm from Debian's packages
#              (mmdebstrap, through apt): python3, python3-pip, ca-certificates
# Images are assembled with buildah (Debian's package) in a throwaway store. The directory is
# cached outside the repository, keyed by a digest of this script and the node module's go.mod,
# so a second run builds nothing. Build output goes to stderr; stdout is only the path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3; exit }' "$here/go.mod")"
digest="$(cat "${BASH_SOURCE[0]}" "$here/go.mod" | sha256sum | cut -c1-12)"
bin_root="${WEFT_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/bin}"
out="$bin_root/images-$digest"
BASE_PACKAGES=python3,python3-pip,ca-certificates

if [[ ! -f "$out/base.tar" ]]; then
    mkdir -p "$bin_root"
    exec 9>"$out.lock"
    flock 9
    if [[ ! -f "$out/base.tar" ]]; then
        for tool in mmdebstrap buildah gcc; do
            command -v "$tool" >/dev/null || { echo "images.sh needs $tool" >&2; exit 1; }
        done
        echo "building the node test images into $out (a few minutes the first time)" >&2
        tmp="$out.tmp.$$"
        buildah=(buildah --root "$tmp/store" --runroot "$tmp/run" --storage-driver vfs)
        # buildah's vfs store holds copies made by root-owned tools; remove it with the folder.
        trap '"${buildah[@]}" rm --all >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
        mkdir -p "$tmp"
        start=$SECONDS

        src="$(cd "$here" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
        nice -n 10 gcc -Os -static -DVERSION="$version" -o "$tmp/pause" "$src/build/pause/linux/pause.c" >&2
        strip "$tmp/pause"
        c="$("${buildah[@]}" from scratch)"
        "${buildah[@]}" copy "$c" "$tmp/pause" /pause >&2
        "${buildah[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$c" >&2
        "${buildah[@]}" commit -q "$c" "localhost/weft/pause:$version" >&2
        "${buildah[@]}" push -q "localhost/weft/pause:$version" \
            "docker-archive:$tmp/pause.tar:localhost/weft/pause:$version" >&2

        # The mirror is the one apt on this machine uses; mmdebstrap goes through apt.
        nice -n 10 mmdebstrap --quiet --variant=apt --include="$BASE_PACKAGES" --format=tar \
            bookworm "$tmp/rootfs.tar" >&2
        c="$("${buildah[@]}" from scratch)"
        "${buildah[@]}" add "$c" "$tmp/rootfs.tar" / >&2
        "${buildah[@]}" config --cmd '["python3"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c" >&2
        "${buildah[@]}" commit -q "$c" localhost/weft/debian:bookworm >&2
        "${buildah[@]}" push -q localhost/weft/debian:bookworm \
            "docker-archive:$tmp/base.tar:localhost/weft/debian:bookworm" >&2

        rm -rf "$out"
        mkdir -p "$out"
        mv "$tmp/pause.tar" "$tmp/base.tar" "$out/"
        echo "built the node test images in $((SECONDS - start)) s" >&2
    fi
fi
echo "$out"
