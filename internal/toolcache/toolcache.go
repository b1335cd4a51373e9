// Package toolcache finds, or builds on first use, the real servers that
// runbook's tests and demo run: binaries built from the pinned tools modules
// of the clone (tools/kes, tools/minio, …) into a cache outside it.
//
// The cache is the one scripts/build-real-servers.sh fills, with the same
// layout, key and lock, so that tests, the script and `runbook demo` build
// each server once per machine:
//
//	$RUNBOOK_TOOLS_CACHE/<name>-<version>-<sum8>/<name>
//
// RUNBOOK_TOOLS_CACHE defaults to $HOME/.cache/runbook/tools; <sum8> is the
// first 8 hex digits of the SHA-256 of the tools module's go.sum followed by
// its *.patch files in name order, so that a change of any pinned dependency
// or patch builds a fresh binary. A build holds an exclusive flock(2) on
// $RUNBOOK_TOOLS_CACHE/.lock, as the script does.
package toolcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/mod/modfile"
)

// Tool is a server binary built from a tools module of the clone.
type Tool struct {
	Name    string // binary name and cache directory prefix: "minio"
	Version string // the version the tools module pins: part of the cache directory
	Module  string // the tools module, relative to the repository root: "tools/minio"
	Package string // the package built: "github.com/minio/minio"
	Pinned  string // the module whose version Version is: "github.com/minio/minio"
	Env     string // a variable naming a binary to use instead: "RUNBOOK_MINIO_BIN"
	// LDFlags are linker flags added to "-s -w": MinIOBeforeKM's release
	// variables. Empty for a plain build.
	LDFlags string
	// Tags are build tags: MinIOFIPS's "fips". Empty for a plain build.
	Tags string
}

// The servers of scripts/build-real-servers.sh, whose table lists the same
// (TestToolsMatchBuildScript).
var (
	KES    = Tool{"kes", "v0.24.0", "tools/kes", "github.com/minio/kes/cmd/kes", "github.com/minio/kes", "RUNBOOK_KES_BIN", "", ""}
	KES023 = Tool{"kes", "v0.23.0", "tools/kes-v0.23", "github.com/minio/kes/cmd/kes", "github.com/minio/kes", "RUNBOOK_KES023_BIN", "", ""}
	KES022 = Tool{"kes", "v0.22.3", "tools/kes-v0.22", "github.com/minio/kes/cmd/kes", "github.com/minio/kes", "RUNBOOK_KES022_BIN", "", ""}
	MinIO  = Tool{"minio", "v0.0.0-20260212201848-7aac2a2c5b7c", "tools/minio", "github.com/minio/minio", "github.com/minio/minio", "RUNBOOK_MINIO_BIN", "", ""}
	// MinIOFIPS is the same MinIO built with the "fips" tag, the MinIO the
	// tests run (internal/testenv). The tag changes one thing MinIO does:
	// madmin-go's EncryptData (fips.go, encrypt.go) seals the admin API's
	// payloads (config, users, service accounts) under a PBKDF2 key instead
	// of Argon2id with 64 MiB of memory, and clients decrypt either (minio-go
	// and mc read the tag too, for a constant MinIO does not use and an
	// update URL). Argon2id costs about a second of CPU for the first
	// payload of a fresh process on 2 cores (page faults) and 130 ms after,
	// on both ends: three quarters of the CPU of the cutover scripts, which
	// restart MinIO and start runbook many times. (What a client seals, the
	// test harness's AddUser or SetConfigKV, is still Argon2id.) The demo
	// and bench/cutover run MinIO as released, as operators do.
	MinIOFIPS = Tool{"minio-fips", "v0.0.0-20260212201848-7aac2a2c5b7c", "tools/minio", "github.com/minio/minio", "github.com/minio/minio", "RUNBOOK_MINIO_FIPS_BIN", "", "fips"}
	Vault     = Tool{"vault", "v1.21.4", "tools/vault", "github.com/hashicorp/vault", "github.com/hashicorp/vault", "RUNBOOK_VAULT_BIN", "", ""}
	// MinIOBeforeKM is the same MinIO linked as its release build of
	// RELEASE.2024-05-07T06-41-25Z would be (cmd.Version and cmd.ReleaseTag,
	// as MinIO's buildscripts/gen-ldflags.go sets them): the release before
	// the Key Manager client. It reports that release's version, which the
	// cutover's release check reads; a real build of that release's source
	// tree is not made here (its whole dependency tree of May 2024).
	MinIOBeforeKM = Tool{"minio-2024-05-07", "v0.0.0-20260212201848-7aac2a2c5b7c", "tools/minio", "github.com/minio/minio", "github.com/minio/minio", "RUNBOOK_MINIO_BEFORE_KM_BIN",
		"-X github.com/minio/minio/cmd.Version=2024-05-07T06:41:25Z -X github.com/minio/minio/cmd.ReleaseTag=RELEASE.2024-05-07T06-41-25Z", ""}
	// A real Kubernetes control plane for the Kubernetes cutover's tests
	// (internal/testenv/k8s.go); kube-apiserver builds in about 10 minutes
	// on 2 idle cores.
	Etcd                  = Tool{"etcd", "v3.7.3", "tools/etcd", "runbook-tools/etcd", "go.etcd.io/etcd/server/v3", "RUNBOOK_ETCD_BIN", "", ""}
	KubeAPIServer         = Tool{"kube-apiserver", "v1.37.2", "tools/kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes", "RUNBOOK_KUBE_APISERVER_BIN", "", ""}
	KubeControllerManager = Tool{"kube-controller-manager", "v1.37.2", "tools/kubernetes", "k8s.io/kubernetes/cmd/kube-controller-manager", "k8s.io/kubernetes", "RUNBOOK_KUBE_CONTROLLER_MANAGER_BIN", "", ""}
)

// BuildHint is the command that builds every server into the cache.
const BuildHint = "run scripts/build-real-servers.sh in a clone of runbook (it prints the RUNBOOK_*_BIN lines to export)"

// Dir is the cache directory: $RUNBOOK_TOOLS_CACHE, else
// $HOME/.cache/runbook/tools.
func Dir() (string, error) {
	if d := os.Getenv("RUNBOOK_TOOLS_CACHE"); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("locate the tools cache: %w; set RUNBOOK_TOOLS_CACHE", err)
	}
	return filepath.Join(home, ".cache", "runbook", "tools"), nil
}

// RepoRoot is the root of the clone whose tools modules are built: the
// first directory holding the runbook module, walking up from the working
// directory, else from the source this binary was compiled from (when it
// was built without -trimpath and that clone is still there).
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if builtFrom != "" {
		starts = append(starts, builtFrom)
	}
	for _, dir := range starts {
		if root, ok := enclosingModule(dir); ok {
			return root, nil
		}
	}
	return "", errors.New("not in a clone of runbook: neither the working directory nor the source this binary was built from lies in the github.com/runbook-dev/runbook module")
}

// builtFrom is this package's source directory as compiled in, or "" when
// the binary was built with -trimpath.
var builtFrom = func() string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		return filepath.Dir(file)
	}
	return ""
}()

func enclosingModule(dir string) (string, bool) {
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modfile.ModulePath(data) == "github.com/runbook-dev/runbook" {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// Path is where t's binary is built for the clone at root:
// Dir()/<name>-<version>-<sum8>/<name>. Errors: the tools module's go.sum
// cannot be read, or its go.mod does not pin t.Version of t.Pinned.
func (t Tool) Path(root string) (string, error) {
	mod := filepath.Join(root, t.Module)
	sum8, err := t.key(mod)
	if err != nil {
		return "", err
	}
	if err := t.checkPin(mod); err != nil {
		return "", err
	}
	cache, err := Dir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, fmt.Sprintf("%s-%s-%s", t.Name, t.Version, sum8), t.Name), nil
}

// key is the first 8 hex digits of the SHA-256 of go.sum followed by the
// module's *.patch files in name order.
func (t Tool) key(mod string) (string, error) {
	patches, err := filepath.Glob(filepath.Join(mod, "*.patch"))
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range append([]string{filepath.Join(mod, "go.sum")}, patches...) {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("read the tools module of %s: %w (is the clone complete?)", t.Name, err)
		}
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:8], nil
}

// checkPin confirms that the module requires t.Pinned at t.Version: the
// version is part of the cache path and must be the one built.
func (t Tool) checkPin(mod string) error {
	name := filepath.Join(mod, "go.mod")
	data, err := os.ReadFile(name)
	if err != nil {
		return fmt.Errorf("read the tools module of %s: %w (is the clone complete?)", t.Name, err)
	}
	f, err := modfile.ParseLax(name, data, nil)
	if err != nil {
		return fmt.Errorf("parse %s: %w", name, err)
	}
	for _, r := range f.Require {
		if r.Mod.Path == t.Pinned {
			if r.Mod.Version != t.Version {
				return fmt.Errorf("%s pins %s %s, not %s: update internal/toolcache and scripts/build-real-servers.sh together", name, t.Pinned, r.Mod.Version, t.Version)
			}
			return nil
		}
	}
	return fmt.Errorf("%s does not require %s", name, t.Pinned)
}

// Find returns t's binary without building it: the file $t.Env names, else
// the cached build. The error names the variable or the cache path and how
// to build it.
func Find(t Tool) (string, error) {
	if p := os.Getenv(t.Env); p != "" {
		if err := Executable(p); err != nil {
			return "", fmt.Errorf("%s=%s: %v; %s", t.Env, p, err, BuildHint)
		}
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("%s is not set and the build cache cannot be located: %v; %s", t.Env, err, BuildHint)
	}
	p, err := t.Path(root)
	if err != nil {
		return "", fmt.Errorf("%s is not set and the build cache cannot be located: %v; %s", t.Env, err, BuildHint)
	}
	if err := Executable(p); err != nil {
		return "", fmt.Errorf("%s is not set and %s %s is not in the build cache (%v); %s", t.Env, t.Name, t.Version, err, BuildHint)
	}
	return p, nil
}

// Executable returns nil when p is an executable file, else why not.
func Executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// ProgressEvery is how often Ensure says that a build is still running.
var ProgressEvery = time.Minute

// Ensure returns t's binary, building it into the cache first when it is
// missing: $t.Env if set, else the cached build, else a build under the
// cache's lock (waiting for another builder first, and using what it built).
// It writes one line to progress when a build starts, one every
// ProgressEvery while it runs and one when it ends. Errors carry the reason
// (not in a clone, no go command, the build's last lines) and BuildHint.
func Ensure(ctx context.Context, t Tool, progress io.Writer) (string, error) {
	if os.Getenv(t.Env) != "" {
		return Find(t)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("cannot build %s: %v; %s", t.Name, err, BuildHint)
	}
	out, err := t.Path(root)
	if err != nil {
		return "", fmt.Errorf("cannot build %s: %v; %s", t.Name, err, BuildHint)
	}
	if Executable(out) == nil {
		return out, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("cannot build %s: the go command is not on PATH (%v); install Go, then %s", t.Name, err, BuildHint)
	}
	unlock, err := lockCache(ctx, filepath.Dir(filepath.Dir(out)), progress)
	if err != nil {
		return "", fmt.Errorf("cannot build %s: %v", t.Name, err)
	}
	defer unlock()
	if Executable(out) == nil { // the builder we waited for built it
		return out, nil
	}
	if err := t.build(ctx, goBin, root, out, progress); err != nil {
		return "", fmt.Errorf("build %s: %w; %s", t.Name, err, BuildHint)
	}
	return out, nil
}

// lockCache takes the cache's build lock (flock on .lock, as
// scripts/build-real-servers.sh takes it), saying so when it must wait.
func lockCache(ctx context.Context, cache string, progress io.Writer) (func(), error) {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("create the tools cache: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open the tools cache's lock: %w", err)
	}
	said := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing drops the flock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock the tools cache: %w", err)
		}
		if !said {
			fmt.Fprintf(progress, "waiting for another build in %s ...\n", cache)
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// build runs what scripts/build-real-servers.sh runs for t: the module's
// prepare.sh if it has an executable one, then a static, trimmed go build
// into a temporary file beside out, checked (go.sum unchanged, --version
// answers) before it is renamed into place.
func (t Tool) build(ctx context.Context, goBin, root, out string, progress io.Writer) error {
	mod := filepath.Join(root, t.Module)
	sum8, err := t.key(mod)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("create cache directory: %w", err)
	}
	tmp := filepath.Join(filepath.Dir(out), fmt.Sprintf(".%s.tmp.%d", t.Name, os.Getpid()))
	defer os.Remove(tmp)
	fmt.Fprintf(progress, "building %s %s from %s into %s: the first time takes minutes (later runs reuse it)\n", t.Name, t.Version, t.Module, out)
	start := time.Now()
	done := make(chan struct{})
	defer close(done)
	go func() {
		tick := time.NewTicker(ProgressEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				fmt.Fprintf(progress, "still building %s (%s so far)\n", t.Name, time.Since(start).Round(time.Second))
			}
		}
	}()
	if prep := filepath.Join(mod, "prepare.sh"); Executable(prep) == nil {
		if log, err := run(ctx, exec.CommandContext(ctx, prep), mod, nil); err != nil {
			return fmt.Errorf("%s/prepare.sh: %w; its last lines:\n%s", t.Module, err, log)
		}
	}
	// -buildvcs=false: the tools module sits in a git clone whose ownership
	// or state must not matter.
	args := []string{"build", "-trimpath", "-ldflags", strings.TrimSpace("-s -w " + t.LDFlags)}
	if t.Tags != "" {
		args = append(args, "-tags", t.Tags)
	}
	cmd := exec.CommandContext(ctx, goBin, append(args, "-o", tmp, t.Package)...)
	if log, err := run(ctx, cmd, mod, []string{"GOFLAGS=-mod=mod -buildvcs=false", "CGO_ENABLED=0"}); err != nil {
		return fmt.Errorf("go build of %s@%s in %s: %w; its last lines:\n%s", t.Package, t.Version, t.Module, err, log)
	}
	// -mod=mod may add missing sums; the cache key would then no longer
	// match what was built.
	if now, err := t.key(mod); err != nil || now != sum8 {
		return fmt.Errorf("%s/go.sum changed during the build (it was incomplete); review and commit it, then run again", t.Module)
	}
	if log, err := run(ctx, exec.CommandContext(ctx, tmp, "--version"), mod, nil); err != nil {
		return fmt.Errorf("built %s, but '%s --version' fails (%w): not installing it; its output:\n%s", t.Package, t.Name, err, log)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("install %s: %w", out, err)
	}
	fmt.Fprintf(progress, "built %s in %s\n", out, time.Since(start).Round(time.Second))
	return nil
}

// run runs cmd in dir with extra environment and returns the last lines of
// its combined output.
func run(ctx context.Context, cmd *exec.Cmd, dir string, env []string) (string, error) {
	var buf bytes.Buffer
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "\t" + strings.Join(lines, "\n\t"), err
}
