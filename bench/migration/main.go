// Command migration benchmarks the whole verified runbook (prerequisites,
// enclave, identity, migration, verification) from a KES fs key store into
// the Key Manager emulator, on its default (most demanding) readings
// (docs/emulator.md), against `kes migrate` v0.24.0 on the same keys into the
// same emulator in the same run.
//
//	go build -o /tmp/runbook ./cmd/runbook
//	eval "$(scripts/build-real-servers.sh)"
//	go run ./bench/migration -runbook /tmp/runbook -compare 1000 -sizes 100000
//	go run ./bench/migration -runbook /tmp/runbook -compare 1000 -sizes '' -latency 1ms
//
// -compare N: N keys, three alternating runs of each, best of three, wall
// time of the whole process. -sizes: the whole runbook's plan and apply at
// each size, with each step's time and the processes' peak RSS. A real KES
// v0.24 server serves each store (the prerequisites and the verification's
// KES round trips talk to it). Results go to stdout as Markdown
// (BENCHMARKS.md).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/testenv"
)

func main() {
	runbookBin := flag.String("runbook", "", "the runbook binary (go build -o /tmp/runbook ./cmd/runbook)")
	kesBin := flag.String("kes", os.Getenv("RUNBOOK_KES_BIN"), "the kes v0.24.0 binary: the KES server, and kes migrate")
	compare := flag.Int("compare", 1000, "keys for the comparison with kes migrate (0: skip)")
	sizesFlag := flag.String("sizes", "100000", "key store sizes for the whole runbook's plan and apply (comma-separated; empty: none)")
	latency := flag.Duration("latency", 0, "latency the emulator adds to every request (0: loopback only)")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.StringVar(&traceDir, "trace", "", "write each runbook run's JSON events (-json) to this directory")
	flag.Parse()
	if *runbookBin == "" || *kesBin == "" {
		log.Fatal("-runbook and -kes (or RUNBOOK_KES_BIN) are required")
	}
	os.Setenv("RUNBOOK_KES_BIN", *kesBin) // testenv starts the KES server from it
	work, err := os.MkdirTemp("", "bench-migration-")
	check(err)
	tb := &benchTB{dir: work}
	defer tb.cleanup()
	if !*keep {
		defer os.RemoveAll(work)
	}
	cfg := emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(work, "km"), FaultLatency: *latency}
	if traceDir != "" {
		lf, err := os.Create(filepath.Join(traceDir, "emulator.log"))
		check(err)
		defer lf.Close()
		cfg.Logf = func(format string, args ...any) {
			fmt.Fprintf(lf, time.Now().Format("15:04:05.000000 ")+format+"\n", args...)
		}
	}
	km, err := emulator.Start(cfg)
	check(err)
	defer km.Close()
	fmt.Printf("Emulator readings: `%s`; latency added per Key Manager request: %s\n\n", km.Readings(), *latency)

	if *compare > 0 {
		st := newStore(tb, filepath.Join(work, "cmp"), *compare)
		fmt.Printf("#### %d keys: whole verified `runbook apply` vs `kes migrate`, three alternating runs\n\n", *compare)
		fmt.Printf("| run | runbook apply: wall | CPU | steps | kes migrate: wall | CPU | keys |\n|---:|---:|---:|---|---:|---:|---:|\n")
		var bestRB, bestKM time.Duration
		for i := 1; i <= 3; i++ {
			rb := st.runbook(*runbookBin, km, fmt.Sprintf("cmp%d", i), "apply")
			kd, kc, k := st.kesMigrate(*kesBin, km, fmt.Sprintf("kesmigrate%d", i))
			fmt.Printf("| %d | %s | %s | %s | %s | %s | %d |\n", i, ms(rb.wall), ms(rb.cpu), rb.stepsLine(), ms(kd), ms(kc), k)
			if bestRB == 0 || rb.wall < bestRB {
				bestRB = rb.wall
			}
			if bestKM == 0 || kd < bestKM {
				bestKM = kd
			}
		}
		fmt.Printf("\nBest of 3: runbook %s, kes migrate %s: **%.1f×**\n\n", ms(bestRB), ms(bestKM), bestKM.Seconds()/bestRB.Seconds())
	}

	if *sizesFlag != "" {
		fmt.Printf("#### Whole verified runbook at scale\n\n| keys | plan: wall | CPU | peak RSS | apply: wall | CPU | peak RSS | steps (apply) |\n|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, s := range strings.Split(*sizesFlag, ",") {
			n, err := strconv.Atoi(s)
			check(err)
			st := newStore(tb, filepath.Join(work, "s"+s), n)
			p := st.runbook(*runbookBin, km, "scale"+s, "plan")
			a := st.runbook(*runbookBin, km, "scale"+s, "apply")
			fmt.Printf("| %d | %s | %s | %.1f MiB | %s | %s | %.1f MiB | %s |\n", n, ms(p.wall), ms(p.cpu), float64(p.maxRSS)/1024, ms(a.wall), ms(a.cpu), float64(a.maxRSS)/1024, a.stepsLine())
			if a.attempt != "" {
				fmt.Printf("\n%d keys, migration: %s\n\n", n, a.attempt)
			}
		}
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// benchTB lets testenv start a KES server outside a test.
type benchTB struct {
	dir      string
	n        int
	cleanups []func()
}

func (b *benchTB) Helper()                           {}
func (b *benchTB) Fatalf(format string, args ...any) { b.cleanup(); log.Fatalf(format, args...) }
func (b *benchTB) Logf(format string, args ...any)   {}
func (b *benchTB) Cleanup(f func())                  { b.cleanups = append(b.cleanups, f) }
func (b *benchTB) TempDir() string {
	b.n++
	d := filepath.Join(b.dir, fmt.Sprintf("tmp%d", b.n))
	check(os.MkdirAll(d, 0o700))
	return d
}
func (b *benchTB) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
}

// store is an fs key store with a real KES server on it.
type store struct {
	dir string
	kes *testenv.KES
}

// newStore writes n keys straight into dir/keys, as KES v0.24 stores them
// (protobuf with an HMAC key), every third one ChaCha20, and starts a KES
// server on them.
func newStore(tb *benchTB, dir string, n int) *store {
	keys := filepath.Join(dir, "keys")
	check(os.MkdirAll(keys, 0o700))
	for i := range n {
		k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), HMAC: make([]byte, 32), CreatedAt: time.Now().UTC(), CreatedBy: "bench"}
		if i%3 == 0 {
			k.Algorithm = kescrypto.ChaCha20
		}
		rand.Read(k.Material)
		rand.Read(k.HMAC)
		b, err := k.MarshalV024()
		check(err)
		check(os.WriteFile(filepath.Join(keys, fmt.Sprintf("key-%06d", i)), b, 0o600))
	}
	return &store{dir: dir, kes: testenv.StartKES(tb, testenv.KESOptions{KeyStoreDir: keys})}
}

type result struct {
	wall    time.Duration
	cpu     time.Duration // user + system CPU of the process
	maxRSS  int64         // KiB
	steps   [][2]string
	attempt string
}

func (r result) stepsLine() string {
	var parts []string
	for _, s := range r.steps {
		parts = append(parts, s[0]+" "+s[1])
	}
	return strings.Join(parts, ", ")
}

var traceDir string

var (
	stepDone    = regexp.MustCompile(`(?m)^(\S+)\s+done \(([^)]+)\)`)
	attemptLine = regexp.MustCompile(`imported \d+ keys this attempt \([^)]*\)`)
)

// runbook runs `runbook plan` or `runbook apply` of the whole verified
// runbook into a new enclave named name.
func (s *store) runbook(bin string, km *emulator.Server, name, verb string) result {
	rb := filepath.Join(s.dir, name+".hcl")
	check(os.WriteFile(rb, fmt.Appendf(nil, `runbook {
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
`, name, s.kes.URL, s.kes.CAFile, s.kes.ConfigFile, km.URL(), km.CAFile(), name), 0o600))
	args := []string{verb, rb}
	if traceDir != "" {
		args = append(args, "-json")
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "RUNBOOK_VAR_km_api_key="+km.RootAPIKey(), "RUNBOOK_VAR_kes_api_key="+s.kes.APIKey)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		log.Fatalf("runbook %s %s: %v\n%s", verb, rb, err, out.String())
	}
	res := result{wall: time.Since(start)}
	if traceDir != "" {
		check(os.WriteFile(filepath.Join(traceDir, name+"."+verb+".jsonl"), out.Bytes(), 0o600))
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.maxRSS = ru.Maxrss
	}
	res.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	for _, m := range stepDone.FindAllStringSubmatch(out.String(), -1) {
		res.steps = append(res.steps, [2]string{m[1], m[2]})
	}
	if traceDir != "" { // -json: one event a line
		for _, line := range strings.Split(out.String(), "\n") {
			var e struct{ Type, Step, State, Duration string }
			if json.Unmarshal([]byte(line), &e) == nil && e.Type == "state" && e.State == "done" && e.Duration != "" {
				res.steps = append(res.steps, [2]string{e.Step, e.Duration})
			}
		}
	}
	res.attempt = attemptLine.FindString(out.String())
	return res
}

// kesMigrate runs kes migrate v0.24.0 on the store into a new enclave and
// returns its wall time and the keys it says it migrated.
func (s *store) kesMigrate(bin string, km *emulator.Server, enclave string) (wall, cpu time.Duration, keys int) {
	c, err := testenv.KMSClient(km.Addr(), km.CAFile(), km.RootAPIKey())
	check(err)
	check(c.CreateEnclave(context.Background(), &kms.CreateEnclaveRequest{Name: enclave}))
	cmd := exec.Command(bin, "migrate", "--from", s.kes.ConfigFile, "--server", km.Addr(), "--enclave", enclave, "--api-key", km.RootAPIKey(), "-k")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	check(cmd.Run())
	d := time.Since(start)
	m := regexp.MustCompile(`Migrated +(\d+) keys successfully`).FindStringSubmatch(out.String())
	if m == nil {
		log.Fatalf("kes migrate: %s", out.String())
	}
	k, _ := strconv.Atoi(m[1])
	return d, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), k
}
