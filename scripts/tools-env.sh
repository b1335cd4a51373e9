# tools-env.sh — source this file to build (if missing) the real KES, MinIO and
# Vault servers and export RUNBOOK_KES_BIN, RUNBOOK_KES023_BIN, RUNBOOK_KES022_BIN,
# RUNBOOK_MINIO_BIN and RUNBOOK_VAULT_BIN:
#
#   . scripts/tools-env.sh && go test ./...
#
# It works from any directory; it returns non-zero if a build fails.
# shellcheck shell=bash
__runbook_env="$("$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)/build-real-servers.sh")" || {
	echo "tools-env.sh: scripts/build-real-servers.sh failed" >&2
	unset __runbook_env
	return 1 2>/dev/null || exit 1
}
while IFS= read -r __runbook_line; do
	[ -n "$__runbook_line" ] && export "$__runbook_line"
done <<EOF_LINES
$__runbook_env
EOF_LINES
unset __runbook_env __runbook_line
