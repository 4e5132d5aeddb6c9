#!/usr/bin/env bash
# Build flannel's own flanneld from the Go module proxy into the kube tier's binary folder, so the kube
# end-to-end test can run a real flanneld node beside weftd nodes. flannel's main package blank-imports
# every backend, and one of them (tencentvpc) needs a cloud SDK version the module proxy does not serve:
# its main.go is built in a wrapper module without that one import (the source stays in the module cache;
# nothing of it enters this repo). About 4 CPU-minutes cold (some 2 minutes on 2 idle cores); a no-op once
# built.
#
#   dist/kubetest/build-flanneld.sh [DIR]    DIR defaults to $WEFT_KUBE_BIN or /var/cache/weft/kube-v1.37.2
set -euo pipefail

FLANNEL_VERSION=${FLANNEL_VERSION:-0.28.10}
dir=${1:-${WEFT_KUBE_BIN:-/var/cache/weft/kube-v1.37.2}}
if [ -x "$dir/flanneld" ]; then
	echo "flanneld v$FLANNEL_VERSION present in $dir"
	exit 0
fi
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
src="$dir/flanneld-src"
rm -rf "$src"
mkdir -p "$src"
cd "$src"
go mod init weft.test/flanneld >/dev/null 2>&1
mod=$(go mod download -json "github.com/flannel-io/flannel@v$FLANNEL_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
[ -n "$mod" ] || { echo "build-flanneld: github.com/flannel-io/flannel@v$FLANNEL_VERSION not found" >&2; exit 1; }
grep -v 'flannel-io/flannel/pkg/backend/tencentvpc"' "$mod/main.go" >main.go
echo "require github.com/flannel-io/flannel v$FLANNEL_VERSION" >>go.mod
go mod tidy
echo "building flanneld v$FLANNEL_VERSION into $dir"
go build -trimpath -ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=v$FLANNEL_VERSION" -o "$dir/flanneld.tmp" .
mv "$dir/flanneld.tmp" "$dir/flanneld"
echo "flanneld v$FLANNEL_VERSION ready in $dir"
