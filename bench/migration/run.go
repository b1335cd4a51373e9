package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/internal/delayproxy"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// site is what a run talks to: the Key Manager and the store's KES server,
// each directly or through a delayproxy.Proxy.
type site struct {
	km      *emulator.Server
	kmAddr  string // the emulator, or its proxy
	kesAddr string // the KES server, or its proxy
	// kesConfig is the KES config both tools read the key store by: the
	// KES server's, or a copy naming a proxy to its Vault (as far as KES).
	kesConfig string
	kmRTT     time.Duration
	kesRTT    time.Duration
	close     func()
}

// newSite puts the latency proxies in front of the emulator and the
// store's KES server (none for 0).
func newSite(km *emulator.Server, st *store, kmRTT, kesRTT time.Duration) *site {
	s := &site{km: km, kmAddr: km.Addr(), kesAddr: st.kes.Addr, kesConfig: st.kes.ConfigFile, kmRTT: kmRTT, kesRTT: kesRTT, close: func() {}}
	var proxies []*delayproxy.Proxy
	if kmRTT > 0 {
		p, err := delayproxy.Start(km.Addr(), kmRTT)
		check(err)
		proxies = append(proxies, p)
		s.kmAddr = p.Addr()
	}
	if kesRTT > 0 {
		p, err := delayproxy.Start(st.kes.Addr, kesRTT)
		check(err)
		proxies = append(proxies, p)
		s.kesAddr = p.Addr()
		if st.vaultURL != "" {
			v, err := delayproxy.Start(strings.TrimPrefix(st.vaultURL, "https://"), kesRTT)
			check(err)
			proxies = append(proxies, v)
			conf, err := os.ReadFile(st.kes.ConfigFile)
			check(err)
			s.kesConfig = filepath.Join(st.dir, fmt.Sprintf("kes-config-%s.yaml", kesRTT))
			check(os.WriteFile(s.kesConfig, bytes.ReplaceAll(conf, []byte(st.vaultURL), []byte("https://"+v.Addr())), 0o600))
		}
	}
	s.close = func() {
		for _, p := range proxies {
			p.Close()
		}
	}
	return s
}

// span is when a step ran, from the process's start.
type span struct {
	step       string
	start, end time.Duration
}

// result is one process's run.
type result struct {
	wall   time.Duration
	cpu    time.Duration // user + system CPU of the process
	maxRSS int64         // KiB
	// ready is the time from the process's start to its first event:
	// start-up, and for apply FILE the quiet plan that comes first.
	ready time.Duration
	steps []span
	logs  []string // the steps' log lines that say where their time went
}

// timeline shows each step's span from the process's start, in the order
// the steps started: "migration.keys 61–98".
func (r result) timeline() string {
	var parts []string
	for _, s := range r.steps {
		parts = append(parts, fmt.Sprintf("%s %s–%s", s.step, msRound(s.start), msRound(s.end)))
	}
	return strings.Join(parts, ", ")
}

// stepTime is how long step took, or 0.
func (r result) stepTime(step string) time.Duration {
	for _, s := range r.steps {
		if s.step == step {
			return s.end - s.start
		}
	}
	return 0
}

// whereLogs match the log lines that say where a step's time went.
var whereLogs = regexp.MustCompile(`imported \d+ keys this attempt|read \d+ entries of the key store|the Key Manager decrypted|checkpointed \d+ proven keys|KES server: the \d+ name|backed up the KES config`)

// runbook runs `runbook VERB` of the whole verified runbook into a new
// enclave named name.
func (s *store) runbook(bin string, st *site, name, verb string) result {
	rb := filepath.Join(s.dir, name+".hcl")
	check(os.WriteFile(rb, fmt.Appendf(nil, runbookText, name, "https://"+st.kesAddr, s.kes.CAFile, st.kesConfig, "https://"+st.kmAddr, st.km.CAFile(), name), 0o600))
	cmd := exec.Command(bin, verb, rb, "-json")
	cmd.Env = append(os.Environ(), "RUNBOOK_VAR_km_api_key="+st.km.RootAPIKey(), "RUNBOOK_VAR_kes_api_key="+s.kes.APIKey)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		log.Fatalf("runbook %s %s: %v", verb, rb, err)
	}
	hwm := watchHWM(cmd.Process.Pid)
	if err := cmd.Wait(); err != nil {
		log.Fatalf("runbook %s %s: %v\n%s", verb, rb, err, out.String())
	}
	res := result{wall: time.Since(start), maxRSS: hwm()}
	if traceDir != "" {
		check(os.WriteFile(filepath.Join(traceDir, name+"."+verb+".jsonl"), out.Bytes(), 0o600))
	}
	res.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	running := map[string]time.Duration{}
	sc := bufio.NewScanner(&out)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var e struct {
			Time                       time.Time
			Type, Step, State, Message string
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		at := e.Time.Sub(start)
		if res.ready == 0 {
			res.ready = at
		}
		switch {
		case e.Type == "state" && e.State == "running":
			running[e.Step] = at
		case e.Type == "state" && e.State == "done":
			res.steps = append(res.steps, span{e.Step, running[e.Step], at})
		case e.Type == "log" && whereLogs.MatchString(e.Message):
			res.logs = append(res.logs, e.Step+": "+e.Message)
		}
	}
	sort.Slice(res.steps, func(i, j int) bool { return res.steps[i].start < res.steps[j].start })
	return res
}

// kesMigrate runs kes migrate v0.24.0 on the store into a new enclave and
// returns its run and the keys it says it migrated.
func (s *store) kesMigrate(bin string, st *site, enclave string) (result, int) {
	c, err := testenv.KMSClient(st.km.Addr(), st.km.CAFile(), st.km.RootAPIKey())
	check(err)
	check(c.CreateEnclave(context.Background(), &kms.CreateEnclaveRequest{Name: enclave}))
	cmd := exec.Command(bin, "migrate", "--from", st.kesConfig, "--server", st.kmAddr, "--enclave", enclave, "--api-key", st.km.RootAPIKey(), "-k")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	check(cmd.Run())
	res := result{wall: time.Since(start), cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	m := regexp.MustCompile(`Migrated +(\d+) keys successfully`).FindStringSubmatch(out.String())
	if m == nil {
		log.Fatalf("kes migrate: %s", out.String())
	}
	k, _ := strconv.Atoi(m[1])
	return res, k
}

// startUp runs `runbook version`: the process's start-up alone.
func startUp(bin string) result {
	cmd := exec.Command(bin, "version")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		log.Fatalf("runbook version: %v\n%s", err, out)
	}
	return result{wall: time.Since(start), cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
}

// initTrace sums the package initialisation GODEBUG=inittrace=1 reports
// for `runbook version`, and names the costliest module paths.
func initTrace(bin string) (total time.Duration, top string) {
	cmd := exec.Command(bin, "version")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, _ := cmd.CombinedOutput()
	by := map[string]float64{}
	var sum float64
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		// init PKG @T ms, C ms clock, B bytes, A allocs
		if len(f) < 6 || f[0] != "init" {
			continue
		}
		ms, err := strconv.ParseFloat(f[4], 64)
		if err != nil {
			continue
		}
		sum += ms
		by[modulePath(f[1])] += ms
	}
	type kv struct {
		k string
		v float64
	}
	var kvs []kv
	for k, v := range by {
		kvs = append(kvs, kv{k, v})
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].v > kvs[j].v })
	var parts []string
	for _, e := range kvs[:min(4, len(kvs))] {
		parts = append(parts, fmt.Sprintf("%s %.1f ms", e.k, e.v))
	}
	return time.Duration(sum * float64(time.Millisecond)), strings.Join(parts, ", ")
}

// modulePath shortens a package path to its owner: "github.com/aws/…",
// "k8s.io/client-go", or "the standard library".
func modulePath(pkg string) string {
	p := strings.Split(pkg, "/")
	switch {
	case !strings.Contains(p[0], "."):
		return "the standard library"
	case len(p) >= 3 && (p[0] == "github.com" || p[0] == "golang.org"):
		return strings.Join(p[:2], "/")
	}
	return strings.Join(p[:min(2, len(p))], "/")
}

// runbookText is the whole verified runbook: name, KES URL, KES CA, KES
// config, Key Manager URL, its CA, enclave name.
const runbookText = `runbook {
  name = %q
}

variable "km_api_key" {
  type      = string
  sensitive = true
}

variable "kes_api_key" {
  type      = string
  sensitive = true
}

kes "legacy" {
  server  = %q
  api_key = var.kes_api_key
  ca_file = %q
  config  = %q
}

key_manager "target" {
  servers = [%q]
  api_key = var.km_api_key
  ca_file = %q
}

prerequisites "preflight" {
  kes         = kes.legacy
  key_manager = key_manager.target
}

enclave "primary" {
  key_manager = key_manager.target
  name        = %q
}

identity "aistor" {
  enclave = enclave.primary
  admin   = true
}

migration "keys" {
  from = kes.legacy
  to   = enclave.primary
}

verification "keys" {
  source     = kes.legacy
  target     = enclave.primary
  depends_on = [migration.keys]
}
`

// watchHWM polls a child's peak resident set (VmHWM, KiB) until the
// returned function is called, which returns the last value seen. The
// rusage of a child is no measure here: a child started by vfork counts
// the benchmark's own resident set until it execs.
func watchHWM(pid int) func() int64 {
	var mu sync.Mutex
	var peak int64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err == nil {
				for _, line := range strings.Split(string(raw), "\n") {
					if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
						if kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64); err == nil {
							mu.Lock()
							peak = max(peak, kb)
							mu.Unlock()
						}
					}
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 {
		close(done)
		<-stopped
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}
