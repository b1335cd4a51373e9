#!/usr/bin/env bash
# prepare.sh — materialize ./sdk, the github.com/hashicorp/vault/sdk that
# go.mod replaces, before scripts/build-real-servers.sh builds Vault.
#
# Vault v1.21.4 builds against its own in-tree sdk (its go.mod replaces
# vault/sdk with ./sdk), which the module zip leaves out and which matches no
# published vault/sdk version: v0.20.0 lacks the observation API its
# backends call (TryRecordObservationWithRequest), v0.21.0 already has the
# three-argument framework.Backend.ActivationFunc and the one-result
# keysutil.LockManager.RestorePolicy (both found by building), and v0.25.1,
# by reading its source, also drops the PkiCertificateCounter API Vault
# uses and adds a SystemView method Vault does not implement (and raises
# about a hundred dependencies). So ./sdk is vault/sdk v0.21.0 from the module proxy with
# sdk.patch applied: the two signatures as Vault v1.21.4 calls them
# (RestorePolicy taken from sdk v0.25.1).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sdk_version=v0.21.0
dir="$(cd / && go mod download -json "github.com/hashicorp/vault/sdk@$sdk_version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -n "$dir" && -d "$dir" ]] || {
	echo "prepare.sh: go mod download of github.com/hashicorp/vault/sdk@$sdk_version gave no directory" >&2
	exit 1
}
tmp="$here/.sdk.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
cp -R "$dir" "$tmp"
chmod -R u+w "$tmp"
patch -d "$tmp" -p1 --forward --no-backup-if-mismatch --quiet <"$here/sdk.patch"
rm -rf "$here/sdk"
mv "$tmp" "$here/sdk"
trap - EXIT
echo "prepare.sh: $here/sdk is vault/sdk $sdk_version with sdk.patch applied" >&2
