#!/usr/bin/env bash
# prepare.sh — materialize ./vault and ./sdk, the patched copies of
# github.com/hashicorp/vault and github.com/hashicorp/vault/sdk that go.mod
# replaces, before scripts/build-real-servers.sh (or internal/toolcache)
# builds Vault.
#
# ./vault is Vault v1.21.4 from the module proxy with vault.patch applied:
# the same server, with less compiled in. The tests run `vault server -dev`
# (in-memory storage, token auth) and use only the kv secrets engine (v1
# and v2), the transit secrets engine, and the AppRole and Kubernetes auth
# methods (internal/testenv/vault.go, internal/keystore/vault_test.go,
# steps/keystore_test.go, testdata/scripts/keystore_vault_*.txtar). The rest
# is mostly cloud SDKs, and those made the build take 18 minutes from empty
# caches (1,108 s here). `go list -deps` went from 2,590 packages
# (312 MB of non-standard-library Go source) to 973 (35 MB).
# vault.patch removes:
#   - from the builtin plugin registry (helper/builtinplugins): everything
#     but approle, kubernetes, kv and transit. That drops the database plugins,
#     the cloud auth methods and secrets engines, and cert, jwt/oidc,
#     userpass, pki and ssh. It does this by making upstream's own `minimal`
#     variant the default (the build passes no tags) and trimming that too;
#   - from the command package's tables (command/commands*.go): the storage
#     backends other than inmem, file and raft; the `vault login` helpers
#     other than token; the database engine; the consul and kubernetes
#     service registrations; and the `vault agent`, `vault proxy` and HCP
#     commands, which link the cloud auto-auth methods and the HCP client;
#   - the cloud KMS seals (AWS, Azure, GCP, AliCloud, OCI auto-unseal);
#     shamir, aead and transit seals stay;
#   - go-discover, behind raft's retry_join auto_join: it links every
#     cloud provider's SDK and the Kubernetes client;
#   - the Okta SDK, behind Okta login MFA: one generated package of 11 MB;
#   - stackdriver telemetry (the Google Cloud Monitoring client);
#   - the MySQL plugin that a test helper (corehelpers) links into the
#     server, and with it the Cloud SQL connector.
# Asking for a removed plugin or seal gets an error saying it "is not built
# into this Vault (runbook's test build)", or Vault's own "plugin not found
# in the catalog"; a removed storage backend, login helper or command gets
# Vault's own unknown-type or unknown-command error. If a test needs another plugin, add it back in vault.patch's
# hunk of helper/builtinplugins/registry.go (the upstream registry_full.go
# lists them all).
#
# ./sdk: Vault v1.21.4 builds against its own in-tree sdk (its go.mod
# replaces vault/sdk with ./sdk, and replace directives only apply in the
# main module: ours replaces it instead), which the module zip leaves out
# and which matches no published vault/sdk version: v0.20.0 lacks the
# observation API its backends call (TryRecordObservationWithRequest), v0.21.0
# already has the three-argument framework.Backend.ActivationFunc and the
# one-result keysutil.LockManager.RestorePolicy (both found by building), and
# v0.25.1, by reading its source, also drops the PkiCertificateCounter API
# Vault uses and adds a SystemView method Vault does not implement (and raises
# about a hundred dependencies). So ./sdk is vault/sdk v0.21.0 from the module
# proxy with sdk.patch applied: the two signatures as Vault v1.21.4 calls them
# (RestorePolicy taken from sdk v0.25.1), plus two trims for the same reason
# as vault.patch: framework no longer imports the database connection helper
# (connutil, which links the Cloud SQL connector; it is only used for database
# mounts, and this Vault has none), and plugins cannot run in containers (no
# Docker client).
#
# The build cache key (scripts/build-real-servers.sh, internal/toolcache) is
# go.sum plus the *.patch files, not this script: anything that changes the
# binary belongs in a patch.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The Vault go.mod requires (the version the build script's cache path
# names): read, so that a bump of go.mod cannot build the old one.
vault_version="$(sed -nE 's/^[[:space:]]*(require[[:space:]]+)?github\.com\/hashicorp\/vault[[:space:]]+(v[^[:space:]]+).*/\2/p' "$here/go.mod" | head -1)"
[[ -n "$vault_version" ]] || {
	echo "prepare.sh: $here/go.mod requires no github.com/hashicorp/vault version" >&2
	exit 1
}
sdk_version=v0.21.0 # not go.mod's: see above

tmp=""
trap 'if [[ -n "$tmp" ]]; then rm -rf "$tmp"; fi' EXIT

# materialize MODULE VERSION PATCH NAME: $here/NAME becomes MODULE@VERSION
# from the module cache (downloaded if missing) with PATCH applied.
materialize() {
	local module="$1" version="$2" patchfile="$3" name="$4" dir json
	# -json puts a failure's reason in its output, not on stderr
	if ! json="$(cd / && go mod download -json "$module@$version")"; then
		printf 'prepare.sh: go mod download of %s@%s failed:\n%s\n' "$module" "$version" "$json" >&2
		return 1
	fi
	dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json")"
	[[ -n "$dir" && -d "$dir" ]] || {
		printf 'prepare.sh: go mod download of %s@%s gave no directory:\n%s\n' "$module" "$version" "$json" >&2
		return 1
	}
	tmp="$here/.$name.tmp.$$"
	cp -R "$dir" "$tmp"
	chmod -R u+w "$tmp"
	patch -d "$tmp" -p1 --forward --no-backup-if-mismatch --quiet <"$here/$patchfile"
	rm -rf "${here:?}/$name"
	mv "$tmp" "$here/$name"
	tmp=""
	echo "prepare.sh: $here/$name is $module $version with $patchfile applied" >&2
}

materialize github.com/hashicorp/vault/sdk "$sdk_version" sdk.patch sdk
materialize github.com/hashicorp/vault "$vault_version" vault.patch vault
