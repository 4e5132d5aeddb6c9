#!/usr/bin/env bash
# Build the weftd image from dist/Dockerfile with podman, without a registry: the base image is made
# locally with mmdebstrap (Debian bookworm minbase with iptables and nftables; cached in
# /var/cache/weft/image under a name made from its package list) and the build runs with no network, using
# the host's Go toolchain and module cache. Rootful podman with its own
# containers.conf (runc, cgroupfs; the defaults fail on this machine kind); it never creates a network.
#
#   dist/kubetest/build-image.sh [TAG]      TAG defaults to localhost/weftd:test; prints the config path
#   CONTAINERS_CONF=/var/cache/weft/image/containers.conf podman run ... localhost/weftd:test
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=${1:-localhost/weftd:test}
cache=${WEFT_IMAGE_CACHE:-/var/cache/weft/image}
pkgs=iptables,nftables,ca-certificates
key=$(printf %s "$pkgs" | sha256sum | cut -c1-8)
base=localhost/weft-base:bookworm-$key
tar="$cache/base-$key.tar"
mkdir -p "$cache"
export CONTAINERS_CONF="$cache/containers.conf"
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

if ! podman image exists "$base"; then
	if [ ! -f "$tar" ]; then
		echo "making the base image (mmdebstrap bookworm minbase + $pkgs, about a minute)"
		mmdebstrap --quiet --variant=minbase --format=tar --include="$pkgs" bookworm "$tar.tmp" \
			"deb http://deb.debian.org/debian bookworm main" \
			"deb http://deb.debian.org/debian bookworm-updates main" \
			"deb http://deb.debian.org/debian-security bookworm-security main"
		mv "$tar.tmp" "$tar"
	fi
	podman import -q "$tar" "$base" >/dev/null
fi

old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
gocache=$(go env GOCACHE)
echo "building $tag from dist/Dockerfile (no network; host Go $(go env GOVERSION))"
podman build -q --network none -f dist/Dockerfile -t "$tag" \
	--build-arg GO_IMAGE="$base" --build-arg BASE_IMAGE="$base" \
	--env GOFLAGS=-mod=mod --env GOPROXY=off \
	-v "$(go env GOROOT)":/usr/local/go:ro -v "$(go env GOMODCACHE)":/root/go/pkg/mod:ro \
	-v "$gocache":/root/.cache/go-build . >/dev/null
podman image prune -f --filter label=org.weft-net.stage=build >/dev/null # this build's own build stage
new=$(podman image inspect --format '{{.Id}}' "$tag")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
	podman rmi "$old" >/dev/null 2>&1 || true # the previous build of this tag; in use: left
fi
echo "$CONTAINERS_CONF"
