package toolcache

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The script and this package name the same servers and compute the same
// cache paths.
func TestToolsMatchBuildScript(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	t.Setenv("RUNBOOK_TOOLS_CACHE", cache)
	out, err := exec.Command("bash", filepath.Join(root, "scripts", "build-real-servers.sh"), "--print-paths").Output()
	if err != nil {
		t.Fatalf("build-real-servers.sh --print-paths: %v", err)
	}
	want := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			t.Fatalf("unexpected output line %q", sc.Text())
		}
		want[name] = value
	}
	tools := []Tool{KES, KES023, KES022, MinIO, MinIOFIPS, MinIOBeforeKM, Vault, Etcd, KubeAPIServer, KubeControllerManager}
	if len(want) != len(tools) {
		t.Fatalf("script printed %d lines, the package knows %d tools:\n%s", len(want), len(tools), out)
	}
	for _, tool := range tools {
		got, err := tool.Path(root)
		if err != nil {
			t.Fatal(err)
		}
		if got != want[tool.Env] {
			t.Errorf("%s: toolcache looks in %s, the script builds %s", tool.Env, got, want[tool.Env])
		}
		if !strings.HasPrefix(got, cache+string(filepath.Separator)) {
			t.Errorf("%s: %s is not under RUNBOOK_TOOLS_CACHE", tool.Env, got)
		}
	}

	// The same path must hold the same build: the cache path names neither
	// the package nor the flags, so each is compared with the script's table.
	script, err := os.ReadFile(filepath.Join(root, "scripts", "build-real-servers.sh"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{} // env var: the row's fields
	for line := range strings.Lines(string(script)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, `"`) || !strings.HasSuffix(line, `"`) || strings.Count(line, "|") < 6 {
			continue
		}
		f := strings.Split(strings.Trim(line, `"`), "|")
		f = append(f, "", "")[:9] // the optional ldflags and tags
		rows[f[6]] = f
	}
	for _, tool := range tools {
		f, ok := rows[tool.Env]
		switch {
		case !ok:
			t.Errorf("%s: no row in the script's servers table", tool.Env)
		case f[1] != tool.Module || f[2] != tool.Package || f[3] != tool.Pinned || f[7] != tool.LDFlags || f[8] != tool.Tags:
			t.Errorf("%s: the script builds %s of %s (pins %s) with ldflags %q and tags %q; toolcache builds %s of %s (pins %s) with %q and %q",
				tool.Env, f[2], f[1], f[3], f[7], f[8], tool.Package, tool.Module, tool.Pinned, tool.LDFlags, tool.Tags)
		}
	}
}

// fakeClone makes a clone of the runbook module holding one tools module,
// tools/hello, whose main package prints its version, and makes it the
// working directory; the tools cache is a new empty directory. broken makes
// the package fail to compile.
func fakeClone(t *testing.T, broken bool) Tool {
	root := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module github.com/runbook-dev/runbook\n\ngo 1.26.0\n")
	write("tools/hello/go.mod", "module example.com/hello\n\ngo 1.26.0\n\nrequire github.com/google/go-cmp v0.7.0\n")
	// go-cmp's sums, from the runbook module's own go.sum (in the module cache).
	sums, err := os.ReadFile(filepath.Join(builtFrom, "..", "..", "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(sums), "\n") {
		if strings.HasPrefix(l, "github.com/google/go-cmp v0.7.0") {
			lines = append(lines, l)
		}
	}
	write("tools/hello/go.sum", strings.Join(lines, "\n")+"\n")
	main := "package main\n\nimport (\n\t\"fmt\"\n\n\t\"github.com/google/go-cmp/cmp\"\n)\n\nfunc main() { fmt.Println(\"hello\", cmp.Equal(1, 1)) }\n"
	if broken {
		main = strings.Replace(main, "cmp.Equal(1, 1)", "cmp.Equal(1)", 1)
	}
	write("tools/hello/main.go", main)
	t.Chdir(root)
	t.Setenv("RUNBOOK_TOOLS_CACHE", t.TempDir())
	t.Setenv("RUNBOOK_HELLO_BIN", "")
	return Tool{Name: "hello", Version: "v0.7.0", Module: "tools/hello", Package: "example.com/hello", Pinned: "github.com/google/go-cmp", Env: "RUNBOOK_HELLO_BIN"}
}

// syncBuffer is a progress writer safe for concurrent builds.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The first use builds into the cache, saying so while it runs; two callers
// at once build once; later calls find the binary without building.
func TestEnsureBuildsOnce(t *testing.T) {
	tool := fakeClone(t, false)
	saved := ProgressEvery
	ProgressEvery = time.Millisecond // the build says every millisecond that it still runs
	t.Cleanup(func() { ProgressEvery = saved })

	var progress syncBuffer
	paths := make([]string, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], errs[i] = Ensure(context.Background(), tool, &progress)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("Ensure: %v\nprogress:\n%s", err, progress.String())
		}
	}
	want, err := tool.Path(".")
	if err != nil {
		t.Fatal(err)
	}
	if paths[0] != want || paths[1] != want {
		t.Errorf("Ensure returned %q and %q, want %s", paths[0], paths[1], want)
	}
	log := progress.String()
	if n := strings.Count(log, "building hello v0.7.0 from tools/hello"); n != 1 {
		t.Errorf("%d builds started, want 1:\n%s", n, log)
	}
	for _, line := range []string{"still building hello (", "built " + want + " in "} {
		if !strings.Contains(log, line) {
			t.Errorf("the progress lacks %q:\n%s", line, log)
		}
	}
	out, err := exec.Command(want).Output()
	if err != nil || string(out) != "hello true\n" {
		t.Errorf("the built binary printed %q (%v)", out, err)
	}

	var again syncBuffer
	if p, err := Ensure(context.Background(), tool, &again); err != nil || p != want || again.String() != "" {
		t.Errorf("Ensure with the binary cached: %q, %v, progress %q; want %s, no error, no progress", p, err, again.String(), want)
	}
	if p, err := Find(tool); err != nil || p != want {
		t.Errorf("Find: %q, %v; want %s", p, err, want)
	}
}

// Every reason a build cannot happen is said, with the command that builds
// the servers; nothing is left in the cache.
func TestEnsureCannotBuild(t *testing.T) {
	t.Run("build fails", func(t *testing.T) {
		tool := fakeClone(t, true)
		_, err := Ensure(context.Background(), tool, &syncBuffer{})
		for _, want := range []string{"go build of example.com/hello@v0.7.0 in tools/hello", "not enough arguments in call to cmp.Equal", BuildHint} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Ensure: %v; want it to say %q", err, want)
			}
		}
		p, _ := tool.Path(".")
		if entries, _ := os.ReadDir(filepath.Dir(p)); len(entries) != 0 {
			t.Errorf("a failed build left %v in %s", entries, filepath.Dir(p))
		}
	})
	t.Run("no go", func(t *testing.T) {
		tool := fakeClone(t, false)
		t.Setenv("PATH", t.TempDir())
		_, err := Ensure(context.Background(), tool, &syncBuffer{})
		if err == nil || !strings.Contains(err.Error(), "the go command is not on PATH") || !strings.Contains(err.Error(), BuildHint) {
			t.Errorf("Ensure without go: %v", err)
		}
	})
	t.Run("not in a clone", func(t *testing.T) {
		tool := fakeClone(t, false)
		t.Chdir(t.TempDir())
		saved := builtFrom
		builtFrom = t.TempDir() // a binary built elsewhere
		t.Cleanup(func() { builtFrom = saved })
		_, err := Ensure(context.Background(), tool, &syncBuffer{})
		if err == nil || !strings.Contains(err.Error(), "not in a clone of runbook") || !strings.Contains(err.Error(), BuildHint) {
			t.Errorf("Ensure outside a clone: %v", err)
		}
	})
	t.Run("pin differs", func(t *testing.T) {
		tool := fakeClone(t, false)
		tool.Version = "v0.6.0"
		_, err := Ensure(context.Background(), tool, &syncBuffer{})
		if err == nil || !strings.Contains(err.Error(), "pins github.com/google/go-cmp v0.7.0, not v0.6.0") {
			t.Errorf("Ensure with another version pinned: %v", err)
		}
	})
	t.Run("variable names no binary", func(t *testing.T) {
		tool := fakeClone(t, false)
		t.Setenv(tool.Env, filepath.Join(t.TempDir(), "no-such-hello"))
		_, err := Ensure(context.Background(), tool, &syncBuffer{})
		if err == nil || !strings.Contains(err.Error(), "RUNBOOK_HELLO_BIN=") || !strings.Contains(err.Error(), BuildHint) {
			t.Errorf("Ensure with %s set to a missing file: %v", tool.Env, err)
		}
	})
}

// A builder that finds the lock taken waits, says so, and uses what the
// holder built.
func TestEnsureWaitsForLock(t *testing.T) {
	tool := fakeClone(t, false)
	cache, _ := Dir()
	unlock, err := lockCache(context.Background(), cache, &syncBuffer{})
	if err != nil {
		t.Fatal(err)
	}
	var progress syncBuffer
	done := make(chan error)
	go func() {
		_, err := Ensure(context.Background(), tool, &progress)
		done <- err
	}()
	// While the lock is held, another process's build "happens": the file
	// appears, then the lock is released.
	for !strings.Contains(progress.String(), "waiting for another build in "+cache) {
		select {
		case err := <-done:
			t.Fatalf("Ensure returned (%v) while the lock was held", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	p, _ := tool.Path(".")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho built elsewhere\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(progress.String(), "building hello") {
		t.Errorf("Ensure built again what the lock holder built:\n%s", progress.String())
	}
}
