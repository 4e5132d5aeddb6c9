#!/usr/bin/env bash
# Build a real kube-apiserver (and kubectl) from the Go module proxy into a cache folder outside the repo,
# for the kube test tier. k8s.io/kubernetes is not meant to be required as a module: a wrapper module
# replaces every k8s.io staging module with its published v0.x version, as kubernetes' own go.mod does with
# ./staging paths. Cold: about 17 CPU-minutes (kubectl adds 7% to kube-apiserver), some 10 minutes on 2 idle
# cores, and ~3 GB of Go build cache; later runs find the binaries and return at once. Building without
# debug information (-gcflags=all=-dwarf=false) or cgo, or both binaries in one go build, measured no faster
# (README "Tests"): compiling their 2,300 packages is the cost.
#
#   dist/kubetest/build-apiserver.sh [DIR]    DIR defaults to $WEFT_KUBE_BIN or /var/cache/weft/kube-v1.37.2
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.37.2}
dir=${1:-${WEFT_KUBE_BIN:-/var/cache/weft/kube-v$KUBE_VERSION}}
minor=${KUBE_VERSION#*.}; minor=${minor%%.*}
staging="v0.${KUBE_VERSION#*.}"

want=(kube-apiserver kubectl)
missing=()
for b in "${want[@]}"; do [ -x "$dir/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
	echo "kube binaries v$KUBE_VERSION present in $dir"
	exit 0
fi

mkdir -p "$dir"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
if [ ! -f "$dir/src/.ready" ]; then
	# A wrapper module; made in a fresh folder each time until it is complete, so an interrupted run
	# never leaves a half-made one behind.
	rm -rf "$dir/src"
	mkdir -p "$dir/src"
	cd "$dir/src"
	go mod init weft.test/kubebin >/dev/null 2>&1
	# kubernetes' go.mod replaces k8s.io/X => ./staging/src/k8s.io/X; use the published X@v0.N.P instead.
	gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
	[ -n "$gomod" ] || { echo "build-apiserver: no go.mod for k8s.io/kubernetes@v$KUBE_VERSION" >&2; exit 1; }
	{
		echo "replace ("
		grep -oE 'k8s\.io/[a-z0-9.-]+ => \./staging/src/k8s\.io/[a-z0-9.-]+' "$gomod" |
			awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
		echo ")"
	} >>go.mod
	go get "k8s.io/kubernetes@v$KUBE_VERSION"
	touch .ready
fi
cd "$dir/src"

ver="-X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=v$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
for b in "${missing[@]}"; do
	echo "building $b v$KUBE_VERSION into $dir (cold: several minutes)"
	go build -trimpath -ldflags "-s -w $ver" -o "$dir/$b.tmp" "k8s.io/kubernetes/cmd/$b"
	mv "$dir/$b.tmp" "$dir/$b"
done
echo "kube binaries v$KUBE_VERSION ready in $dir"
