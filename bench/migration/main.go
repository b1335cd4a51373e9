// Command migration benchmarks the whole verified runbook (prerequisites,
// enclave, identity, migration, verification) from a KES fs key store into
// the Key Manager emulator, on its default (most demanding) readings
// (docs/emulator.md), against `kes migrate` v0.24.0 on the same keys into the
// same emulator in the same run: on every store shape operators have, at
// the round-trip times they have to the Key Manager and to KES, and at
// scale against the time the KES server alone needs to list its names.
//
//	go run ./bench/migration -write BENCHMARKS.md     # the whole matrix
//	go run ./bench/migration -quick                   # a smaller matrix, a few minutes
//
// It builds the runbook binary itself (or takes -runbook) and finds or
// builds the KES servers (internal/toolcache). A real KES server serves each
// store (the prerequisites and the verification talk to it); latency is
// added by a TCP proxy in front of the emulator and one in front of KES
// (internal/delayproxy). The tables go to stdout in BENCHMARKS.md's format; -write
// replaces the generated part of that file's migration section.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/internal/toolcache"
)

var traceDir string

type options struct {
	runbookBin, kesBin string
	compare            int
	shapes             []shape
	latencies          []time.Duration
	wan                int
	wanShapes          []shape
	wanRTT             time.Duration
	sizes              []int
	scaleShapes        []shape
	runs               int
	kesCPU             int
	vaultScale         int
}

func main() {
	var o options
	quick := flag.Bool("quick", false, "a smaller matrix (two shapes, no 10 ms column, 10,000 keys at scale), for a check in minutes")
	flag.StringVar(&o.runbookBin, "runbook", "", "the runbook binary (default: built from ./cmd/runbook into the work directory as the kes binary is, CGO_ENABLED=0 -trimpath -ldflags '-s -w')")
	flag.StringVar(&o.kesBin, "kes", "", "the kes v0.24.0 binary for kes migrate (default: internal/toolcache)")
	flag.IntVar(&o.compare, "compare", 1000, "keys for the comparison with kes migrate on every shape and latency (0: skip)")
	shapesFlag := flag.String("shapes", "v0.24,v0.23,mixed,v0.22,vault", "store shapes of the comparison")
	latFlag := flag.String("latencies", "0,1ms,10ms", "round-trip times added to every connection to the Key Manager and to KES in the comparison")
	flag.IntVar(&o.wan, "wan", 10000, "keys for the comparison with -wan-rtt to the Key Manager (0: skip)")
	wanShapesFlag := flag.String("wan-shapes", "mixed", "store shapes of the -wan comparison")
	flag.DurationVar(&o.wanRTT, "wan-rtt", 10*time.Millisecond, "round-trip time to the Key Manager (and KES) in the -wan comparison")
	sizesFlag := flag.String("sizes", "10000,100000", "key store sizes at scale: plan and apply, against the KES server's listing alone (empty: none)")
	scaleShapesFlag := flag.String("scale-shapes", "v0.24,v0.23", "store shapes at scale")
	flag.IntVar(&o.kesCPU, "kes-cpu", 1, "at scale, also run with the KES server on this CPU alone and the rest on the others, as when KES has a host of its own (-1: shared only)")
	flag.IntVar(&o.vaultScale, "vault-scale", 10000, "keys of a Vault store at scale: plan and apply against the time Vault needs to serve every value once (0: skip)")
	flag.IntVar(&o.runs, "runs", 3, "runs of each side per comparison (best of)")
	write := flag.String("write", "", "replace the generated part of this file's migration section (BENCHMARKS.md)")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.StringVar(&traceDir, "trace", "", "write each runbook run's JSON events to this directory")
	flag.Parse()
	if *quick {
		*shapesFlag, *latFlag, o.wan, *sizesFlag, *scaleShapesFlag, o.vaultScale = "v0.24,mixed", "0,1ms", 2000, "10000", "mixed", 0
	}
	o.shapes = parseShapes(*shapesFlag)
	o.wanShapes = parseShapes(*wanShapesFlag)
	o.scaleShapes = parseShapes(*scaleShapesFlag)
	for _, s := range splitList(*latFlag) {
		if s == "0" {
			o.latencies = append(o.latencies, 0)
			continue
		}
		d, err := time.ParseDuration(s)
		check(err)
		o.latencies = append(o.latencies, d)
	}
	for _, s := range splitList(*sizesFlag) {
		n, err := strconv.Atoi(s)
		check(err)
		o.sizes = append(o.sizes, n)
	}

	work, err := os.MkdirTemp("", "bench-migration-")
	check(err)
	tb := &benchTB{dir: work}
	defer tb.cleanup()
	if !*keep {
		defer os.RemoveAll(work)
	}
	if o.runbookBin == "" {
		// Built as the kes binary it is compared with: as KES releases
		// are (kes@v0.24.0 .goreleaser.yml: CGO_ENABLED=0, -trimpath,
		// -s -w), internal/toolcache builds it, and docs/kubernetes.md
		// builds runbook's image. Go's default where a C compiler is
		// installed links the C library dynamically, whose loading adds
		// about 9 ms to every start here (BENCHMARKS.md).
		o.runbookBin = filepath.Join(work, "runbook")
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", o.runbookBin, "./cmd/runbook")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		check(build.Run())
	}
	if o.kesBin == "" {
		o.kesBin, err = toolcache.Ensure(context.Background(), toolcache.KES, os.Stderr)
		check(err)
	}
	for _, sh := range slices.Concat(o.shapes, o.wanShapes, o.scaleShapes) {
		if sh.vault || o.vaultScale > 0 {
			_, err = toolcache.Ensure(context.Background(), toolcache.Vault, os.Stderr)
			check(err)
			break
		}
	}
	cfg := emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(work, "km")}
	if traceDir != "" {
		check(os.MkdirAll(traceDir, 0o700))
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

	var doc strings.Builder
	out := io.MultiWriter(os.Stdout, &doc)
	b := &bench{o: o, tb: tb, work: work, km: km, out: out}
	b.header()
	if o.compare > 0 {
		b.compareAll(o.compare, o.shapes, o.latencies)
	}
	if o.wan > 0 {
		b.compareAll(o.wan, o.wanShapes, []time.Duration{o.wanRTT})
	}
	if len(o.sizes) > 0 {
		b.scale()
	}
	if o.vaultScale > 0 {
		b.vaultAtScale(o.vaultScale)
	}
	b.footer()
	if *write != "" {
		check(replaceGenerated(*write, doc.String()))
	}
}

func parseShapes(list string) []shape {
	var out []shape
	for _, n := range splitList(list) {
		s, err := shapeNamed(n)
		check(err)
		out = append(out, s)
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// msRound shows a duration in milliseconds below 10 s, tenths of a second
// above.
func msRound(d time.Duration) string {
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
