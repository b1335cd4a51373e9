// Command cutover measures the cutover on a 4-node MinIO cluster (in a test
// host: a network namespace of its own) on a real KES, under a steady,
// bounded load of minio-go clients with default retries writing and reading
// SSE-S3 and SSE-KMS objects: per run, `runbook apply` (migration and
// cutover) then `runbook rollback --force` (the load keeps writing, so the
// rollback's write check would refuse). It reports per run:
//
//   - the window in which writes were refused, as the cutover itself
//     measures and reports it (from its first failed probe, of node 1's
//     /minio/health/cluster or of a write through a server's own endpoint,
//     until every server accepted a write), and how many nodes it restarted
//     alone because they refused writes while another accepted;
//   - the same seen from outside, per node, every 100 ms: its
//     /minio/health/cluster (the longest span without a 200) and a PUT of a
//     small SSE-S3 object through it with a single attempt (the longest span
//     in which writes were refused), per direction;
//   - the client requests that failed after minio-go's default retries, and
//     the longest span in which a client completed no request;
//   - whether every object written during the run reads back afterwards.
//
// The load is bounded: each client stops after -max-requests requests or
// when the run has lasted -max-run, whichever comes first, and sends its
// requests to the test host's addresses only.
//
//	go build -o /tmp/runbook ./cmd/runbook
//	eval "$(scripts/build-real-servers.sh)"
//	go run ./bench/cutover -runbook /tmp/runbook -runs 5
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"

	"github.com/runbook-dev/runbook/internal/s3bucket"
	"github.com/runbook-dev/runbook/internal/testenv"
)

func main() {
	// The cutover's restart_command: this binary, as minio-ctl.
	if len(os.Args) > 1 && os.Args[1] == "minio-ctl" {
		os.Args = os.Args[1:]
		testenv.MinIOCtlMain()
	}
	runbookBin := flag.String("runbook", "", "the runbook binary (go build -o /tmp/runbook ./cmd/runbook)")
	runs := flag.Int("runs", 3, "cutover and rollback runs")
	nodes := flag.Int("nodes", 4, "MinIO server processes")
	clients := flag.Int("clients", 4, "minio-go clients, one goroutine each, spread over the nodes")
	interval := flag.Duration("interval", 100*time.Millisecond, "pause between a client's requests")
	maxRequests := flag.Int("max-requests", 2000, "a client stops after this many requests")
	maxRun := flag.Duration("max-run", 10*time.Minute, "the load of a run stops after this long")
	keep := flag.Bool("keep", false, "keep the work directory (the runbook's output of every run is in runN/)")
	flag.Parse()
	if *runbookBin == "" {
		log.Fatal("-runbook is required")
	}
	abs, err := filepath.Abs(*runbookBin)
	check(err)
	*runbookBin = abs
	t := &benchTB{}
	defer t.cleanup()
	work, err := os.MkdirTemp("", "bench-cutover-")
	check(err)
	if !*keep {
		t.Cleanup(func() { os.RemoveAll(work) })
	}
	t.dir = work
	fatal = func(format string, args ...any) { t.Fatalf(format, args...) }

	host := testenv.StartTestHost(t)
	k := testenv.StartKES(t, testenv.KESOptions{Host: host})
	km := testenv.StartKeyManager(t, testenv.KeyManagerOptions{Host: host, Bin: *runbookBin})
	ctx := context.Background()
	check(k.Client().CreateKey(ctx, "minio-default-key"))
	check(k.Client().CreateKey(ctx, "tenant-a"))
	c := testenv.StartMinIOCluster(t, testenv.MinIOClusterOptions{Nodes: *nodes, DrivesPerNode: 1, Env: testenv.KESEnv(k, "minio-default-key"), CAFiles: []string{km.CAFile}, Host: host, ReleaseBuild: true})
	control := c.ServeControl(t)
	self, err := os.Executable()
	check(err)

	fmt.Printf("%d nodes, %d clients (one request each every %s: PUT SSE-S3 or SSE-KMS, then GET it back; at most %d requests or %s each run)\n\n", *nodes, *clients, *interval, *maxRequests, *maxRun)
	fmt.Printf("| run | cutover: window (runbook) | restarted alone | health (probes, worst node) | writes refused (probes, worst node) | rollback: window (runbook) | restarted alone | health (probes) | writes refused (probes) | longest client gap | requests | failed | objects written | unreadable afterwards |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var upWins, downWins, upHealth, downHealth, upWrites, downWrites []time.Duration
	failedTotal, requestsTotal := int64(0), int64(0)
	var upAlone, downAlone, upRunsAlone, downRunsAlone int
	for run := 1; run <= *runs; run++ {
		dir := filepath.Join(work, fmt.Sprintf("run%d", run))
		check(os.MkdirAll(dir, 0o700))
		var files []string // the aistor block's nodes: each server's env file
		for _, n := range c.Nodes {
			files = append(files, fmt.Sprintf("%q = { env_file = %q }", n.Endpoint, n.EnvFile))
		}
		check(os.WriteFile(filepath.Join(dir, "cut.hcl"), fmt.Appendf(nil, runbookHCL, k.URL, k.CAFile, k.ConfigFile, km.URL, km.CAFile, c.URL, c.CAFile, c.RootUser, strings.Join(files, ", "), strconv.Quote(self), fmt.Sprintf("bench-%d", run)), 0o600))
		env := append(os.Environ(), "RUNBOOK_VAR_kes_api_key="+k.APIKey, "RUNBOOK_VAR_km_api_key="+km.RootAPIKey, "RUNBOOK_VAR_root_password="+c.RootPassword, "MINIO_CONTROL_URL="+control)

		l := startLoad(c, *clients, *interval, *maxRequests, *maxRun, run)
		p := startProbes(c, *maxRun)
		up, upN := runbook(dir, env, *runbookBin, "apply", "cut.hcl")
		upH, upW := p.mark()
		down, downN := runbook(dir, env, *runbookBin, "rollback", "-force", "cut.hcl")
		downH, downW := p.mark()
		p.stop()
		l.stop()
		unreadable := l.verify()
		fmt.Printf("| %d | %s | %d | %s | %s | %s | %d | %s | %s | %s | %d | %d | %d | %d |\n", run, up, upN, maxOf(upH), maxOf(upW), down, downN, maxOf(downH), maxOf(downW), l.longestGap().Round(10*time.Millisecond), l.requests.Load(), l.failed.Load(), len(l.written), unreadable)
		upAlone, downAlone = upAlone+upN, downAlone+downN
		if upN > 0 {
			upRunsAlone++
		}
		if downN > 0 {
			downRunsAlone++
		}
		fmt.Fprintf(os.Stderr, "run %d: per node, cutover: health %v writes %v; rollback: health %v writes %v\n", run, upH, upW, downH, downW)
		for _, e := range l.errs {
			fmt.Fprintf(os.Stderr, "run %d: %s\n", run, e)
		}
		upWins, downWins = append(upWins, up), append(downWins, down)
		upHealth, downHealth = append(upHealth, maxOf(upH)), append(downHealth, maxOf(downH))
		upWrites, downWrites = append(upWrites, maxOf(upW)), append(downWrites, maxOf(downW))
		failedTotal += l.failed.Load()
		requestsTotal += l.requests.Load()
	}
	fmt.Printf("\ncutover window (runbook): median %s, max %s; worst node's health (probes): median %s, max %s; worst node's writes refused (probes): median %s, max %s\n", median(upWins), maxOf(upWins), median(upHealth), maxOf(upHealth), median(upWrites), maxOf(upWrites))
	fmt.Printf("rollback window (runbook): median %s, max %s; worst node's health (probes): median %s, max %s; worst node's writes refused (probes): median %s, max %s\n", median(downWins), maxOf(downWins), median(downHealth), maxOf(downHealth), median(downWrites), maxOf(downWrites))
	fmt.Printf("nodes restarted alone: %d in %d of %d cutovers, %d in %d of %d rollbacks\n", upAlone, upRunsAlone, *runs, downAlone, downRunsAlone, *runs)
	fmt.Printf("failed client requests: %d of %d\n", failedTotal, requestsTotal)
}

// fatal ends the benchmark after the cleanups (servers, test host) ran.
var fatal = log.Fatalf

const runbookHCL = `runbook {
  name = "cut"
}

variable "kes_api_key" {
  type      = string
  sensitive = true
}

variable "km_api_key" {
  type      = string
  sensitive = true
}

variable "root_password" {
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

aistor "prod" {
  endpoint        = %q
  ca_file         = %q
  access_key      = %q
  secret_key      = var.root_password
  nodes           = { %s }
  restart         = "command"
  restart_command = [%s, "minio-ctl", "restart"]
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

cutover "aistor" {
  aistor       = aistor.prod
  enclave      = enclave.primary
  api_key      = identity.aistor.api_key
  on_failure   = "stop"
  wait_timeout = "180s"
  depends_on   = [migration.keys]
}
`

var (
	windowRE = regexp.MustCompile(`writes were refused for ([0-9.]+[a-zµ]+), from the first failed probe`)
	aloneRE  = regexp.MustCompile(`still refuses writes through its own endpoint while others accept .*: restarting it alone`)
)

// runbook runs one runbook command in dir and returns the window its log
// reports and how many nodes it restarted alone.
func runbook(dir string, env []string, bin string, args ...string) (time.Duration, int) {
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	_ = os.WriteFile(filepath.Join(dir, args[0]+".out"), out, 0o600)
	if err != nil {
		fatal("runbook %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := windowRE.FindSubmatch(out)
	if m == nil {
		fatal("runbook %s: no unavailability window in its output:\n%s", strings.Join(args, " "), out)
	}
	d, err := time.ParseDuration(string(m[1]))
	check(err)
	return d, len(aloneRE.FindAll(out, -1))
}

// load is the clients' steady traffic.
type load struct {
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	requests atomic.Int64
	failed   atomic.Int64
	mu       sync.Mutex
	written  map[string][]byte
	errs     []string
	clients  []*minio.Client
	bucket   string
	// gaps[i] is client i's longest span between two completed requests
	// (failed or not: a request that fails after its retries ends the span).
	gaps []time.Duration
}

func startLoad(c *testenv.MinIOCluster, clients int, interval time.Duration, maxRequests int, maxRun time.Duration, run int) *load {
	ctx, cancel := context.WithTimeout(context.Background(), maxRun)
	l := &load{cancel: cancel, written: map[string][]byte{}, bucket: fmt.Sprintf("load-%d", run), gaps: make([]time.Duration, clients)}
	pem, err := os.ReadFile(c.CAFile)
	check(err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	for i := range clients {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		mc, err := minio.New(c.Nodes[i%len(c.Nodes)].Endpoint, &minio.Options{Creds: credentials.NewStaticV4(c.RootUser, c.RootPassword, ""), Secure: true, Transport: tr})
		check(err)
		l.clients = append(l.clients, mc)
	}
	_, err = s3bucket.Make(ctx, l.clients[0], l.bucket)
	check(err)
	kmsEnc, err := encrypt.NewSSEKMS("tenant-a", nil)
	check(err)
	for i, mc := range l.clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			last := time.Now()
			for n := 0; ctx.Err() == nil && 2*n < maxRequests; n++ {
				name := fmt.Sprintf("c%d/%06d", i, n)
				body := fmt.Appendf(nil, "client %d object %d run %d", i, n, run)
				enc := encrypt.NewSSE()
				if n%2 == 1 {
					enc = kmsEnc
				}
				// A request runs to its end even when the run's time is up:
				// what it wrote must be known to be checked afterwards.
				rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Minute)
				l.requests.Add(1)
				_, err := mc.PutObject(rctx, l.bucket, name, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{ServerSideEncryption: enc})
				l.gaps[i] = max(l.gaps[i], time.Since(last))
				last = time.Now()
				if err != nil {
					l.fail(fmt.Sprintf("%s PUT %s: %v", time.Now().Format("15:04:05.000"), name, err))
				} else {
					l.mu.Lock()
					l.written[name] = body
					l.mu.Unlock()
					l.requests.Add(1)
					got, err := readAll(rctx, mc, l.bucket, name)
					l.gaps[i] = max(l.gaps[i], time.Since(last))
					last = time.Now()
					if err != nil {
						l.fail(fmt.Sprintf("%s GET %s: %v", time.Now().Format("15:04:05.000"), name, err))
					} else if !bytes.Equal(got, body) {
						l.fail(fmt.Sprintf("GET %s: content differs", name))
					}
				}
				rcancel()
				select {
				case <-ctx.Done():
				case <-time.After(interval):
				}
			}
		}()
	}
	return l
}

func (l *load) fail(msg string) {
	l.failed.Add(1)
	l.mu.Lock()
	l.errs = append(l.errs, msg)
	l.mu.Unlock()
}

func (l *load) stop() { l.cancel(); l.wg.Wait() }

// longestGap is the longest span in which some client completed no
// request (the pause between requests included).
func (l *load) longestGap() time.Duration { return maxOf(l.gaps) }

// probes watches every node from outside, every probeEvery, in two ways:
// its /minio/health/cluster (200: the node sees write quorum), and a PUT of
// a small SSE-S3 object through it with a single attempt (no retries). Per
// node and way, it keeps the longest span from a failed answer (or none) to
// the next good one since the last mark.
type probes struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	longest [2][]time.Duration // [probeHealth or probeWrite][node]
	downAt  [2][]time.Time
}

const (
	probeEvery  = 100 * time.Millisecond
	probeHealth = 0
	probeWrite  = 1
)

// startProbes probes until stop, or for maxRun at most.
func startProbes(c *testenv.MinIOCluster, maxRun time.Duration) *probes {
	ctx, cancel := context.WithTimeout(context.Background(), maxRun)
	p := &probes{cancel: cancel}
	for k := range p.longest {
		p.longest[k] = make([]time.Duration, len(c.Nodes))
		p.downAt[k] = make([]time.Time, len(c.Nodes))
	}
	pem, err := os.ReadFile(c.CAFile)
	check(err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	const bucket = "probe"
	for i, n := range c.Nodes {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		hc := &http.Client{Transport: tr, Timeout: time.Second}
		mc, err := minio.New(n.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(c.RootUser, c.RootPassword, ""), Secure: true, Transport: tr, MaxRetries: 1})
		check(err)
		if i == 0 {
			_, err := s3bucket.Make(ctx, mc, bucket)
			check(err)
		}
		checks := [2]func() bool{
			probeHealth: func() bool {
				resp, err := hc.Get(n.URL + "/minio/health/cluster")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			},
			probeWrite: func() bool {
				wctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				body := []byte(n.Name)
				_, err := mc.PutObject(wctx, bucket, n.Name, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{ServerSideEncryption: encrypt.NewSSE()})
				return err == nil
			},
		}
		for k, ok := range checks {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				t := time.NewTicker(probeEvery)
				defer t.Stop()
				for ctx.Err() == nil {
					good := ok()
					now := time.Now()
					p.mu.Lock()
					switch {
					case !good && p.downAt[k][i].IsZero():
						p.downAt[k][i] = now
					case good && !p.downAt[k][i].IsZero():
						p.longest[k][i] = max(p.longest[k][i], now.Sub(p.downAt[k][i]))
						p.downAt[k][i] = time.Time{}
					}
					p.mu.Unlock()
					select {
					case <-ctx.Done():
					case <-t.C:
					}
				}
			}()
		}
	}
	return p
}

// mark returns every node's longest windows since the last mark (a node
// still failing counts until now), health then writes, and starts over.
func (p *probes) mark() (health, writes []time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	var out [2][]time.Duration
	for k := range p.longest {
		out[k] = make([]time.Duration, len(p.longest[k]))
		for i := range p.longest[k] {
			w := p.longest[k][i]
			if !p.downAt[k][i].IsZero() {
				w = max(w, now.Sub(p.downAt[k][i]))
				p.downAt[k][i] = now
			}
			out[k][i] = w.Round(10 * time.Millisecond)
			p.longest[k][i] = 0
		}
	}
	return out[probeHealth], out[probeWrite]
}

func (p *probes) stop() { p.cancel(); p.wg.Wait() }

// verify reads every object written during the run and returns how many
// do not read back with their content. Nodes that were just restarted
// together may answer "not found" for a while as they reconnect to each
// other's drives, so an object that fails is asked again for up to a
// minute before it counts.
func (l *load) verify() int {
	ctx := context.Background()
	var names []string
	for n := range l.written {
		names = append(names, n)
	}
	sort.Strings(names)
	deadline := time.Now().Add(time.Minute)
	bad, retried := 0, 0
	for _, n := range names {
		for attempt := 0; ; attempt++ {
			got, err := readAll(ctx, l.clients[0], l.bucket, n)
			if err == nil && bytes.Equal(got, l.written[n]) {
				if attempt > 0 {
					retried++
				}
				break
			}
			if time.Now().Before(deadline) {
				time.Sleep(500 * time.Millisecond)
				continue
			}
			bad++
			if bad <= 5 {
				fmt.Fprintf(os.Stderr, "afterwards: %s/%s: %v\n", l.bucket, n, err)
			}
			break
		}
	}
	if retried > 0 {
		fmt.Fprintf(os.Stderr, "afterwards: %d object(s) read only when asked again\n", retried)
	}
	return bad
}

func readAll(ctx context.Context, mc *minio.Client, bucket, name string) ([]byte, error) {
	o, err := mc.GetObject(ctx, bucket, name, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer o.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(o)
	return b.Bytes(), err
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func maxOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func check(err error) {
	if err != nil {
		fatal("%v", err)
	}
}

// benchTB is the testenv.TB of a benchmark: fatal errors end the process
// after the cleanups ran.
type benchTB struct {
	dir      string
	mu       sync.Mutex
	cleanups []func()
}

var _ testenv.TB = (*benchTB)(nil)

func (t *benchTB) Helper() {}
func (t *benchTB) Fatalf(format string, args ...any) {
	t.cleanup()
	log.Fatalf(format, args...)
}
func (t *benchTB) Logf(format string, args ...any) { log.Printf(format, args...) }
func (t *benchTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *benchTB) TempDir() string {
	d, err := os.MkdirTemp(t.dir, "t-")
	check(err)
	return d
}

func (t *benchTB) cleanup() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
