#!/usr/bin/env bash
# install-test-deps.sh — Debian packages the end-to-end tests need beyond Go:
#   openssh-server  the real sshd that the cutover's ssh:// env files are
#                   tested against (testdata/scripts/cutover_ssh*.txtar).
#   iproute2        `ip netns`: the MinIO cluster, its KES and the Key Manager
#                   run in a network namespace the test creates (a test host,
#                   internal/testenv/testhost.go); the tests run as root.
#   patch           applies tools/vault/sdk.patch when the real Vault server
#                   is built (tools/vault/prepare.sh).
# Idempotent and quiet: it does nothing when every program is present. CI runs
# it as root on a fresh machine; elsewhere it uses sudo if it must install.
set -euo pipefail

missing=()
command -v sshd >/dev/null 2>&1 || [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v ip >/dev/null 2>&1 || [[ -x /usr/sbin/ip ]] || [[ -x /sbin/ip ]] || missing+=(iproute2)
command -v patch >/dev/null 2>&1 || missing+=(patch)
((${#missing[@]} == 0)) && exit 0

sudo=()
if [[ $(id -u) -ne 0 ]]; then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "install-test-deps.sh: need root (or sudo) to install: ${missing[*]}" >&2
		exit 1
	fi
	sudo=(sudo)
fi
echo "install-test-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
