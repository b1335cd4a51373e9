// Command migration benchmarks the migration step: keys migrated per second
// from an fs key store of each size into the Key Manager emulator over
// loopback TLS, the peak memory of `runbook apply`, the journal's share of
// the workers' time, a kill -9 and resume, and `kes migrate` v0.24.0 on the
// same 1,000 keys into the same emulator as the ratio to beat.
//
//	go build -o /tmp/runbook ./cmd/runbook
//	eval "$(scripts/build-real-servers.sh)"
//	go run ./bench/migration -runbook /tmp/runbook -kes "$RUNBOOK_KES_BIN" -sizes 1000,10000,100000
//	go run ./bench/migration -runbook /tmp/runbook -kes "$RUNBOOK_KES_BIN" -sizes 1000,10000 -latency 1ms
//
// Results go to stdout as a Markdown table (BENCHMARKS.md).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
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

	kes "github.com/minio/kes-go"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/testenv"
)

func main() {
	runbookBin := flag.String("runbook", "", "the runbook binary (go build -o /tmp/runbook ./cmd/runbook)")
	kesBin := flag.String("kes", os.Getenv("RUNBOOK_KES_BIN"), "the kes v0.24.0 binary, for kes migrate (empty: skip)")
	sizesFlag := flag.String("sizes", "1000,10000,100000", "key store sizes")
	parallelism := flag.Int("parallelism", 0, "migration parallelism (0: the step's default)")
	killAt := flag.Int("kill-at", 10000, "also kill -9 the apply of this size mid-way and resume (0: skip)")
	keep := flag.Bool("keep", false, "keep the work directory")
	latency := flag.Duration("latency", 0, "latency the emulator adds to every request (0: loopback only)")
	flag.Parse()
	if *runbookBin == "" {
		log.Fatal("-runbook is required")
	}
	work, err := os.MkdirTemp("", "bench-migration-")
	check(err)
	if !*keep {
		defer os.RemoveAll(work)
	}
	km, err := emulator.Start(emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(work, "km"), FaultLatency: *latency})
	check(err)
	defer km.Close()

	fmt.Printf("| keys | runbook apply (wall) | migration step | keys/s (step) | peak RSS | journal share |\n|---:|---:|---:|---:|---:|---:|\n")
	var rate1000 float64
	for _, s := range strings.Split(*sizesFlag, ",") {
		n, err := strconv.Atoi(s)
		check(err)
		dir := filepath.Join(work, "s"+s)
		conf := makeStore(dir, n)
		res := apply(*runbookBin, dir, conf, km, "e"+s, *parallelism, 0)
		fmt.Printf("| %d | %s | %s | %.0f | %.1f MiB | %s |\n", n, res.wall.Round(time.Millisecond), res.step, res.rate, float64(res.maxRSS)/1024, res.journal)
		if n == 1000 {
			rate1000 = res.rate
		}
		if n == *killAt {
			resume := apply(*runbookBin, dir, conf, km, "k"+s, *parallelism, n/2)
			fmt.Printf("\nkill -9 at %d of %d checkpoints, then resume: %s\n\n", resume.before, n, resume.resumeLine)
		}
	}
	if *kesBin != "" {
		dir := filepath.Join(work, "s1000")
		if _, err := os.Stat(dir); err != nil {
			makeStore(dir, 1000)
		}
		c, err := testenv.KMSClient(km.Addr(), km.CAFile(), km.RootAPIKey())
		check(err)
		check(c.CreateEnclave(context.Background(), &kms.CreateEnclaveRequest{Name: "kesmigrate"}))
		cmd := exec.Command(*kesBin, "migrate", "--from", filepath.Join(dir, "kes-config.yaml"), "--server", km.Addr(), "--enclave", "kesmigrate", "--api-key", km.RootAPIKey(), "-k")
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
		rate := float64(k) / d.Seconds()
		fmt.Printf("\nkes migrate v0.24.0, same 1,000 keys, same emulator: %d keys in %s = %.0f keys/s (whole process)\n", k, d.Round(time.Millisecond), rate)
		if rate1000 > 0 {
			fmt.Printf("ratio runbook/kes migrate at 1,000 keys (step rate / kes migrate rate): %.1fx\n", rate1000/rate)
		}
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// makeStore writes n keys straight into dir/keys, as KES v0.24 stores them
// (protobuf with an HMAC key), every third one ChaCha20, plus a KES config
// naming the store, and returns the config's path.
func makeStore(dir string, n int) string {
	keys := filepath.Join(dir, "keys")
	check(os.MkdirAll(keys, 0o700))
	tlsFiles, err := testenv.GenerateTLS(filepath.Join(dir, "tls"), "kes")
	check(err)
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
	apiKey, err := kes.GenerateAPIKey(rand.Reader)
	check(err)
	conf := filepath.Join(dir, "kes-config.yaml")
	check(os.WriteFile(conf, fmt.Appendf(nil, "version: v1\naddress: 127.0.0.1:7373\nadmin:\n  identity: %s\ntls:\n  key: %s\n  cert: %s\nkeystore:\n  fs:\n    path: %s\n",
		apiKey.Identity(), tlsFiles.KeyFile, tlsFiles.CertFile, keys), 0o600))
	return conf
}

type result struct {
	wall       time.Duration
	step       string
	rate       float64
	maxRSS     int64 // KiB
	journal    string
	before     int
	resumeLine string
}

var (
	rateLine    = regexp.MustCompile(`imported (\d+) keys this attempt .* in (\S+) \((\d+) keys/s\)`)
	journalLine = regexp.MustCompile(`journal: waiting for durable per-key checkpoints took (\d+%)`)
	ckptLine    = regexp.MustCompile(`"item":"key/`)
)

// apply runs `runbook apply` of a runbook that migrates the store into a new
// enclave. With killAt > 0 it kills the apply once the journal holds killAt
// key checkpoints, then unlocks and resumes.
func apply(bin, dir, conf string, km *emulator.Server, enclave string, parallelism, killAt int) result {
	rb := filepath.Join(dir, enclave+".hcl")
	par := ""
	if parallelism > 0 {
		par = fmt.Sprintf("  parallelism = %d\n", parallelism)
	}
	check(os.WriteFile(rb, fmt.Appendf(nil, `runbook {
  name = %q
}

variable "km_api_key" {
  type      = string
  sensitive = true
}

kes "legacy" {
  config = %q
}

key_manager "target" {
  servers = [%q]
  api_key = var.km_api_key
  ca_file = %q
}

enclave "primary" {
  key_manager = key_manager.target
  name        = %q
}

migration "keys" {
  from = kes.legacy
  to   = enclave.primary
%s}
`, enclave, conf, km.URL(), km.CAFile(), enclave, par), 0o600))
	env := append(os.Environ(), "RUNBOOK_VAR_km_api_key="+km.RootAPIKey())
	journal := filepath.Join(dir, ".runbook", enclave, engine.JournalFile)

	cmd := exec.Command(bin, "apply", rb)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	check(cmd.Start())
	if killAt > 0 {
		for {
			b, _ := os.ReadFile(journal)
			if len(ckptLine.FindAllIndex(b, -1)) >= killAt {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		b, _ := os.ReadFile(journal)
		before := len(ckptLine.FindAllIndex(b, -1))
		u := exec.Command(bin, "unlock", rb)
		u.Env = env
		check(u.Run())
		r := exec.Command(bin, "resume", rb)
		r.Env = env
		ro, err := r.CombinedOutput()
		if err != nil {
			log.Fatalf("resume: %v\n%s", err, ro)
		}
		m := regexp.MustCompile(`imported \d+ keys this attempt \([^)]*\)`).Find(ro)
		return result{before: before, resumeLine: string(m)}
	}
	if err := cmd.Wait(); err != nil {
		log.Fatalf("apply %s: %v\n%s", rb, err, out.String())
	}
	res := result{wall: time.Since(start)}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.maxRSS = ru.Maxrss
	}
	if m := rateLine.FindStringSubmatch(out.String()); m != nil {
		res.step = m[2]
		res.rate, _ = strconv.ParseFloat(m[3], 64)
	}
	if m := journalLine.FindStringSubmatch(out.String()); m != nil {
		res.journal = m[1]
	}
	return res
}
