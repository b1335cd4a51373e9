# tools-env.sh — source this file to build (if missing) the real servers the
# tests run and export their RUNBOOK_*_BIN variables (RUNBOOK_KES_BIN,
# RUNBOOK_MINIO_FIPS_BIN, ...: scripts/build-real-servers.sh lists them):
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
