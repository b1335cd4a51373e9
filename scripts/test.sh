#!/usr/bin/env bash
# test.sh — the project's test command (CI runs exactly this via .ci/run).
#
# 0. installs the Debian packages the tests need (scripts/install-test-deps.sh),
# 1. builds the real servers (KES v0.24.0, v0.23.0 and v0.22.3; MinIO, as
#    released, relinked as an older release, and with the fips tag, which the
#    tests run; Vault, trimmed to what the tests use; etcd, kube-apiserver,
#    kube-controller-manager) into the cache outside the
#    clone if they are missing (scripts/build-real-servers.sh; instant when
#    cached) and exports their RUNBOOK_*_BIN variables (scripts/tools-env.sh),
# 2. checks formatting and vet, runs every test against those servers (the
#    fleet module's too: fleet/ has its own go.mod), the
#    race detector over engine, steps and emulator, a 10-point crash test
#    (bench/crash, docs/crash-test.md) and each fuzz target briefly.
# From the start, the later phases' builds are made ahead at low priority
# into the build cache (the fleet module's, with Temporal's server, the
# largest build of a first run; the race-instrumented packages; the fuzz
# targets' instrumented builds): they use the CPU the server builds and the
# end-to-end scripts leave idle, and each phase then finds its packages
# compiled.
#
# Extra arguments go to 'go test' (e.g. scripts/test.sh -run Interop -v).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$(date +%s)
# Debian packages the tests need (openssh-server for the ssh cutover tests).
scripts/install-test-deps.sh

# The later phases' builds, made ahead into the build cache at low priority
# (nice 15, autogroup nice 19: the foreground, the server builds and then
# the main module's tests, comes first), in the order the phases run: the
# fleet module's packages and everything they import (go vet compiles every
# dependency and links nothing; Temporal's server from empty caches is the
# largest build of a first run), then the race-instrumented packages and the
# fuzz targets' instrumented builds. The main module's tests are not built
# here (only what the fleet imports of it is): the foreground compiles them
# as soon as the servers are ready, and two processes compiling the same
# package at once only duplicate the work; nor is its crash-test binary
# linked here, since its phase would link it again. Only the cache is kept:
# each phase builds again from it, so an error here shows there (a step
# that fails here is logged and the next one runs). The fleet phase waits
# only for the fleet's builds (fleet.built): the others go on beside its
# tests, which mostly wait on their servers.
work="$(mktemp -d)"
warm_pid=""
# Its own process group (setsid), so that an early exit stops every build in
# it; a runner that kills only test.sh's group with SIGKILL (no trap runs)
# leaves these builds to finish on their own, into the cache. A new session
# is also a new autogroup where the kernel has them
# (/proc/sys/kernel/sched_autogroup_enabled): autogroups share the CPU by
# their own nice, not their processes', so the job sets its autogroup's to
# 19 too (measured: at autogroup nice 0 it took half the CPU, and KES took
# 222 s to build instead of 118).
trap 'if [[ -n "$warm_pid" ]]; then kill -- "-$warm_pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
setsid nice -n 15 bash -c '{ echo 19 >/proc/self/autogroup; } 2>/dev/null || true
	ahead() { "$@" || echo "test.sh: made ahead, failed: $*" >&2; }
	(cd fleet && ahead go vet ./...)
	touch "$1/fleet.built"
	ahead go test -race -c -o "$1/race/" ./engine ./steps ./emulator
	for pkg in ./engine ./internal/kescrypto ./emulator ./internal/envfile; do
		ahead go test -c -fuzz . -o "$1/fuzz/" "$pkg"
	done' warm "$work" >"$work/warm.log" 2>&1 &
warm_pid=$!
# warm_failed reports the builds made ahead that failed since it last did
# (each phase builds again, and its error shows there).
warm_reported=0
warm_failed() {
	local failed
	failed="$(grep "made ahead, failed" "$work/warm.log" | tail -n "+$((warm_reported + 1))")" || true
	if [[ -n "$failed" ]]; then
		echo "test.sh: builds made ahead failed (each phase builds again; its error shows there): $failed" >&2
		warm_reported=$((warm_reported + $(wc -l <<<"$failed")))
	fi
}

# shellcheck source=scripts/tools-env.sh
. scripts/tools-env.sh
echo "test.sh: real servers ready after $(($(date +%s) - start))s" >&2

unformatted="$(gofmt -l $(go list -f '{{.Dir}}' ./...))"
if [[ -n "$unformatted" ]]; then
	echo "test.sh: gofmt needed:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...

# -parallel 4 (every package's parallel tests, with -p 2 packages at once):
# the end-to-end scripts (cmd/runbook) mostly wait on the servers they start
# and restart, and two at a time left the 2 cores half idle.
go test -count=1 -timeout 60m -parallel 4 "$@" ./...
echo "test.sh: tests passed after $(($(date +%s) - start))s" >&2

# The fleet module (fleet/, a module of its own so that Temporal's server and
# SDK stay out of this one): its formatting, vet and tests, against the
# embedded Temporal server, real KES servers, a real MinIO and the emulator,
# with real worker processes. Temporal's server is the largest build of a
# first run (made ahead, above; it waits here only for what is left of it);
# later runs come from the build cache.
while [[ ! -e "$work/fleet.built" ]] && kill -0 "$warm_pid" 2>/dev/null; do sleep 2; done
warm_failed
(
	cd fleet
	unformatted="$(gofmt -l .)"
	if [[ -n "$unformatted" ]]; then
		echo "test.sh: gofmt needed in fleet/:" >&2
		echo "$unformatted" >&2
		exit 1
	fi
	go vet ./...
	go test -count=1 -timeout 40m ./...
)
echo "test.sh: fleet module passed after $(($(date +%s) - start))s" >&2

# The race detector over the packages with concurrency of their own: the
# journal's group commit and the walk (engine), the migration's workers and
# the cutover's parallel node edits (steps), the emulator's shared state.
# Whole packages: their tests take about a minute under -race on 2 cores;
# building the race-instrumented dependencies takes a few minutes once, then
# comes from the build cache. (The end-to-end scripts in cmd/runbook run
# the binary in child processes; -race there would cost far more for the
# same code.)
wait "$warm_pid" || true
warm_pid=""
warm_failed
go test -race -count=1 -timeout 30m ./engine ./steps ./emulator
echo "test.sh: race detector passed after $(($(date +%s) - start))s" >&2

# The crash test, 10 points (docs/crash-test.md has the 100-point run): the
# full migrate.hcl on 2,000 keys with real KES, the emulator and a real
# MinIO, kill -9 at an instant of every step, then resume or rollback, each
# checked. About 2 minutes on 2 cores.
go build -o "$work/crash/runbook" ./cmd/runbook
go run ./bench/crash -runbook "$work/crash/runbook" -keys 2000 -points 10
echo "test.sh: crash test passed after $(($(date +%s) - start))s" >&2

# Each fuzz target, briefly (a count, not a duration: Go 1.26's fuzzer can end
# a timed run with a spurious "context deadline exceeded").
fuzzcount="${RUNBOOK_FUZZCOUNT:-3000x}"
for target in "./engine FuzzLoad" "./engine FuzzLoadLimits" "./engine FuzzReadJournal" "./engine FuzzRedact" \
	"./internal/kescrypto FuzzParseKey" "./internal/kescrypto FuzzOpen" \
	"./emulator FuzzKMSRequest" "./internal/envfile FuzzEdit"; do
	set -- $target
	go test -run '^$' -fuzz "^$2\$" -fuzztime "$fuzzcount" "$1"
done
echo "test.sh: done: tests and fuzzing passed in $(($(date +%s) - start))s" >&2
