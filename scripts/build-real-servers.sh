#!/usr/bin/env bash
# build-real-servers.sh — build the real KES and MinIO servers that the tests
# run against, from the pinned tools modules under tools/, into a cache
# outside the clone.
#
# Usage:
#   scripts/build-real-servers.sh            # build what is missing, print env lines
#   eval "$(scripts/build-real-servers.sh)"  # ... and export them (progress goes to stderr)
#   source scripts/tools-env.sh              # same, as a sourceable file
#
# Cache layout (RUNBOOK_TOOLS_CACHE defaults to $HOME/.cache/runbook/tools):
#   $RUNBOOK_TOOLS_CACHE/kes-v0.24.0-<sum8>/kes
#   $RUNBOOK_TOOLS_CACHE/kes-v0.23.0-<sum8>/kes
#   $RUNBOOK_TOOLS_CACHE/kes-v0.22.3-<sum8>/kes
#   $RUNBOOK_TOOLS_CACHE/minio-<version>-<sum8>/minio
#   $RUNBOOK_TOOLS_CACHE/minio-fips-<version>-<sum8>/minio-fips
#   $RUNBOOK_TOOLS_CACHE/minio-2024-05-07-<version>-<sum8>/minio-2024-05-07
#   $RUNBOOK_TOOLS_CACHE/vault-v1.21.4-<sum8>/vault
#   $RUNBOOK_TOOLS_CACHE/etcd-v3.7.3-<sum8>/etcd
#   $RUNBOOK_TOOLS_CACHE/kube-apiserver-v1.37.2-<sum8>/kube-apiserver
#   $RUNBOOK_TOOLS_CACHE/kube-controller-manager-v1.37.2-<sum8>/kube-controller-manager
# <sum8> is the first 8 hex digits of the SHA-256 of the tools module's go.sum
# followed by its *.patch files in name order, so a change of any pinned
# dependency or patch builds a fresh binary. internal/toolcache computes the
# same paths when the RUNBOOK_*_BIN variables are not set.
#
# A tools module with an executable prepare.sh has it run before its build
# (tools/vault: it materializes the patched Vault module and vault/sdk its
# go.mod replaces: vault.patch leaves out what the tests do not use).
#
# Only stdout carries the RUNBOOK_*_BIN=... lines; everything else goes to
# stderr. Exit status is non-zero if any build fails.
#
#   scripts/build-real-servers.sh --print-paths
# prints the lines for the expected paths without building anything.
set -euo pipefail

print_only=false
case "${1:-}" in
--print-paths) print_only=true ;;
"") ;;
*)
	echo "usage: $0 [--print-paths]" >&2
	exit 2
	;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${RUNBOOK_TOOLS_CACHE:-$HOME/.cache/runbook/tools}"

# name | tools module dir | package | module whose version is pinned | version | binary | env var [| -X ldflags [| build tags]]
# The Kubernetes binaries are slow to build cold (kube-apiserver about 10 min
# on 2 idle cores, kube-controller-manager 3.5 min more, etcd 2 min).
# internal/toolcache lists the same servers.
servers=(
	"kes|tools/kes|github.com/minio/kes/cmd/kes|github.com/minio/kes|v0.24.0|kes|RUNBOOK_KES_BIN"
	"kes|tools/kes-v0.23|github.com/minio/kes/cmd/kes|github.com/minio/kes|v0.23.0|kes|RUNBOOK_KES023_BIN"
	"kes|tools/kes-v0.22|github.com/minio/kes/cmd/kes|github.com/minio/kes|v0.22.3|kes|RUNBOOK_KES022_BIN"
	"minio|tools/minio|github.com/minio/minio|github.com/minio/minio|v0.0.0-20260212201848-7aac2a2c5b7c|minio|RUNBOOK_MINIO_BIN"
	# the same MinIO, linked as the release before the Key Manager client
	# reports itself (a relink of the build above: seconds)
	"minio-2024-05-07|tools/minio|github.com/minio/minio|github.com/minio/minio|v0.0.0-20260212201848-7aac2a2c5b7c|minio-2024-05-07|RUNBOOK_MINIO_BEFORE_KM_BIN|-X github.com/minio/minio/cmd.Version=2024-05-07T06:41:25Z -X github.com/minio/minio/cmd.ReleaseTag=RELEASE.2024-05-07T06-41-25Z"
	# the same MinIO with the fips tag, which the tests run: its admin API
	# seals payloads under PBKDF2, not Argon2id (internal/toolcache says
	# why; madmin-go, minio-go and mc read the tag, so they and what imports
	# them build again: about a minute)
	"minio-fips|tools/minio|github.com/minio/minio|github.com/minio/minio|v0.0.0-20260212201848-7aac2a2c5b7c|minio-fips|RUNBOOK_MINIO_FIPS_BIN||fips"
	"vault|tools/vault|github.com/hashicorp/vault|github.com/hashicorp/vault|v1.21.4|vault|RUNBOOK_VAULT_BIN"
	"etcd|tools/etcd|runbook-tools/etcd|go.etcd.io/etcd/server/v3|v3.7.3|etcd|RUNBOOK_ETCD_BIN"
	"kube-apiserver|tools/kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|k8s.io/kubernetes|v1.37.2|kube-apiserver|RUNBOOK_KUBE_APISERVER_BIN"
	"kube-controller-manager|tools/kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|k8s.io/kubernetes|v1.37.2|kube-controller-manager|RUNBOOK_KUBE_CONTROLLER_MANAGER_BIN"
)

log() { printf '%s\n' "$*" >&2; }
sha8() {
	if command -v sha256sum >/dev/null 2>&1; then
		cat "$@" | sha256sum | cut -c1-8
	else
		cat "$@" | shasum -a 256 | cut -c1-8
	fi
}
# keyfiles DIR: the files whose content keys a tools module's build.
keyfiles() {
	local f
	printf '%s\n' "$1/go.sum"
	for f in "$1"/*.patch; do
		[[ -f "$f" ]] && printf '%s\n' "$f"
	done
	return 0
}
die() { log "build-real-servers: ERROR: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "the go command is not on PATH"
$print_only || mkdir -p "$cache" || die "cannot create cache directory $cache"

# One build at a time per cache (two test runs starting together must not
# both spend 4 minutes on MinIO). The lock is taken only when something must
# be built, so a run that finds every binary never waits on another's build.
locked=false
lock_for_build() {
	$locked && return 0
	locked=true
	command -v flock >/dev/null 2>&1 || return 0
	exec 9>"$cache/.lock"
	if ! flock -n 9; then
		log "build-real-servers: waiting for another build in $cache ..."
		flock 9
	fi
}

total_start=$(date +%s)
env_lines=()
for entry in "${servers[@]}"; do
	IFS='|' read -r name moddir pkg pinmod version bin envvar xflags tags <<<"$entry"
	modpath="$repo/$moddir"
	[[ -f "$modpath/go.mod" && -f "$modpath/go.sum" ]] ||
		die "$moddir/go.mod or go.sum is missing (clone incomplete?)"
	# The cache key must name the version the module really pins.
	if ! grep -Eq "^[[:space:]]*(require[[:space:]]+)?${pinmod//./\\.}[[:space:]]+${version//./\\.}([[:space:]]|$)" "$modpath/go.mod"; then
		die "$moddir/go.mod does not pin $pinmod $version; update scripts/build-real-servers.sh and internal/toolcache together"
	fi
	mapfile -t keyed < <(keyfiles "$modpath")
	sum8="$(sha8 "${keyed[@]}")"
	dir="$cache/$name-$version-$sum8"
	out="$dir/$bin"
	if ! $print_only && [[ ! -x "$out" ]]; then
		lock_for_build # another run may have built it meanwhile
	fi
	if $print_only; then
		:
	elif [[ -x "$out" ]]; then
		log "build-real-servers: found $out"
	else
		mkdir -p "$dir"
		tmp="$dir/.$bin.tmp.$$"
		trap 'rm -f "$tmp"' EXIT
		log "build-real-servers: building $pkg@$version ($moddir) -> $out"
		start=$(date +%s)
		if [[ -x "$modpath/prepare.sh" ]] && ! "$modpath/prepare.sh" >&2; then
			rm -f "$tmp"
			die "$moddir/prepare.sh failed (see the output above)"
		fi
		# -buildvcs=false: the tools module sits in a git clone whose
		# ownership or state must not matter.
		if ! (cd "$modpath" && GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 \
			go build -trimpath -ldflags "-s -w${xflags:+ $xflags}" ${tags:+-tags "$tags"} -o "$tmp" "$pkg"); then
			rm -f "$tmp"
			die "go build of $pkg@$version in $moddir failed (see the output above)"
		fi
		# -mod=mod may add missing sums; the cache key (and the path
		# internal/testenv computes) would then no longer match.
		if [[ "$(sha8 "${keyed[@]}")" != "$sum8" ]]; then
			rm -f "$tmp"
			die "$moddir/go.sum changed during the build (it was incomplete); review and commit it, then run again"
		fi
		if ! "$tmp" --version >/dev/null 2>&1; then
			rm -f "$tmp"
			die "built $pkg but '$bin --version' fails; not installing it"
		fi
		mv -f "$tmp" "$out"
		trap - EXIT
		log "build-real-servers: built $out in $(($(date +%s) - start))s ($(du -h "$out" | cut -f1))"
	fi
	env_lines+=("$envvar=$out")
done

$print_only || log "build-real-servers: done in $(($(date +%s) - total_start))s"
printf '%s\n' "${env_lines[@]}"
