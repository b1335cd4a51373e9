// Package demo starts the servers `runbook demo` rehearses on, all on this
// machine and all stopped when the demo ends: the bundled KES key store served
// by a real KES, the Key Manager emulator, and a real MinIO (several nodes
// where MinIO allows it, else one) running on KES-era settings.
//
// Everything lives in the demo's folder, which the demo leaves behind for a
// look afterwards and to continue from after an interruption:
//
//	servers.json     the addresses and ports (Restore starts the servers again on them)
//	kes/             KES's config, TLS material, API keys (0600) and log
//	key-manager/     the emulator's state (its root API key 0600, its CA)
//	nodes/           MinIO's certs dir and per node its env file (0600), drive and log
//	sample.json      the objects the demo wrote and their SHA-256
//
// The servers' own files hold the credentials those servers need, as on a
// real host (/etc/default/minio holds the root password); nothing else of
// the folder does.
package demo

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/internal/devcert"
)

// DefaultKey is MinIO's default key (MINIO_KMS_KES_KEY_NAME), which KES
// creates before MinIO first starts, as an operator does with
// `kes key create`.
const DefaultKey = "minio-default-key"

// Options configures Start.
type Options struct {
	Dir      string // the demo's folder; the bundled key store is in Dir/KeyStore
	KeyStore string // the fs key store, relative to Dir
	Nodes    int    // MinIO server processes (1 or more)
	Address  string // the IP the nodes listen on ("" = 127.0.0.1)
	KESBin   string
	MinIOBin string
}

// Servers are the demo's running servers.
type Servers struct {
	Dir   string
	KES   *KES
	KM    *emulator.Server
	MinIO *MinIO

	control *http.Server
}

// state is servers.json: what Restore needs to start the same servers on
// the same addresses (the env files, the KES config and the runbook's
// variables name them). No credential.
type state struct {
	Address   string `json:"address"`
	KESPort   int    `json:"kes_port"`
	KMPort    int    `json:"key_manager_port"`
	NodePorts []int  `json:"node_ports"`
}

const stateFile = "servers.json"

// Start lays out and starts the demo's servers in opts.Dir: the Key Manager
// emulator, KES on the bundled key store (with MinIO's default key
// created), and MinIO's nodes on KES-era settings, trusting the Key
// Manager's CA already (certs/CAs, as the procedure requires before the
// cutover). It returns once every node serves. On an error, whatever was
// started is stopped.
func Start(ctx context.Context, opts Options) (_ *Servers, err error) {
	if opts.Address == "" {
		opts.Address = "127.0.0.1"
	}
	if opts.Nodes < 1 {
		return nil, errors.New("the demo needs at least one MinIO node")
	}
	s := &Servers{Dir: opts.Dir}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	st := state{Address: opts.Address}
	if s.KM, err = emulator.Start(emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(opts.Dir, "key-manager")}); err != nil {
		return nil, fmt.Errorf("start the Key Manager emulator: %w", err)
	}
	_, port, _ := net.SplitHostPort(s.KM.Addr())
	st.KMPort, _ = strconv.Atoi(port)

	// A port picked free can be taken before the server binds it: try again
	// on fresh ones.
	for attempt := 0; ; attempt++ {
		if st.KESPort, err = freePort("127.0.0.1"); err != nil {
			return nil, err
		}
		if s.KES, err = newKES(filepath.Join(opts.Dir, "kes"), filepath.Join(opts.Dir, opts.KeyStore), st.KESPort); err != nil {
			return nil, err
		}
		if err = s.KES.start(ctx, opts.KESBin); !errors.Is(err, errPortInUse) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if err := s.KES.createKey(ctx, DefaultKey); err != nil {
		return nil, err
	}
	env := map[string]string{
		"MINIO_KMS_KES_ENDPOINT": s.KES.URL,
		"MINIO_KMS_KES_KEY_NAME": DefaultKey,
		"MINIO_KMS_KES_API_KEY":  s.KES.MinIOKey,
		"MINIO_KMS_KES_CAPATH":   s.KES.CAFile,
	}
	nodes := filepath.Join(opts.Dir, "nodes")
	for attempt := 0; ; attempt++ {
		st.NodePorts = st.NodePorts[:0]
		for range opts.Nodes {
			p, err := freePort(opts.Address)
			if err != nil {
				return nil, err
			}
			st.NodePorts = append(st.NodePorts, p)
		}
		if s.MinIO, err = newMinIO(nodes, opts.MinIOBin, opts.Address, st.NodePorts, env, s.KM.CAFile()); err != nil {
			return nil, err
		}
		if err = s.MinIO.startAll(); err == nil {
			err = s.MinIO.settle(ctx, 3*time.Minute)
		}
		if !errors.Is(err, errPortInUse) || attempt == 3 {
			break
		}
		s.MinIO.stopAll()
	}
	if err != nil {
		return nil, fmt.Errorf("start MinIO: %w", err)
	}
	if err := s.serveControl(nodes); err != nil {
		return nil, err
	}
	raw, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(filepath.Join(opts.Dir, stateFile), append(raw, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", stateFile, err)
	}
	return s, nil
}

// Restore starts the servers of the demo folder dir again, on the addresses
// they had, after the demo was interrupted: the journal names them, and a
// resume or rollback needs them. The nodes start with their env files as
// they are now, which may be mid-cutover (naming the Key Manager, or not
// identical yet, which keeps a node of several waiting for its peers), so
// Restore does not wait for them to serve: Settle does.
func Restore(ctx context.Context, dir, kesBin, minioBin string) (_ *Servers, err error) {
	raw, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s holds no demo servers (no %s): run runbook demo --dir %s first", dir, stateFile, dir)
	}
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w", stateFile, err)
	}
	s := &Servers{Dir: dir}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	taken := func(what string, port int, err error) error {
		return fmt.Errorf("start %s again on port %d, where the demo's journal and env files expect it: %w; stop what listens there, then run again", what, port, err)
	}
	if s.KM, err = emulator.Start(emulator.Config{Addr: fmt.Sprintf("127.0.0.1:%d", st.KMPort), Dir: filepath.Join(dir, "key-manager")}); err != nil {
		return nil, taken("the Key Manager emulator", st.KMPort, err)
	}
	if s.KES, err = openKES(filepath.Join(dir, "kes"), st.KESPort); err != nil {
		return nil, err
	}
	if err := s.KES.start(ctx, kesBin); err != nil {
		return nil, taken("KES", st.KESPort, err)
	}
	nodes := filepath.Join(dir, "nodes")
	if s.MinIO, err = openMinIO(nodes, minioBin, st.Address, st.NodePorts); err != nil {
		return nil, err
	}
	if err := s.MinIO.startAll(); err != nil {
		return nil, fmt.Errorf("start MinIO again: %w", err)
	}
	if err := s.serveControl(nodes); err != nil {
		return nil, err
	}
	return s, nil
}

// Settle waits up to timeout until every MinIO node serves, and names those
// that do not (the cutover's resume or rollback restarts them).
func (s *Servers) Settle(ctx context.Context, timeout time.Duration) error {
	return s.MinIO.settle(ctx, timeout)
}

// Close stops every server and the control endpoint; the folder stays.
// It is safe to call more than once, and on a partly started Servers.
func (s *Servers) Close() {
	if s.control != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.control.Shutdown(ctx)
		cancel()
		_ = s.control.Close()
	}
	if s.MinIO != nil {
		s.MinIO.stopAll()
	}
	if s.KES != nil {
		s.KES.p.stop(5 * time.Second)
	}
	if s.KM != nil {
		_ = s.KM.Close()
	}
}

// Vars are the values of the demo runbook's variables (runbooks/demo.hcl),
// NAME=VALUE: the servers' addresses and the credentials it is given.
func (s *Servers) Vars() []string {
	vars := []string{
		"kes_server=" + s.KES.URL,
		"kes_api_key=" + s.KES.APIKey,
		"km_server=" + s.KM.URL(),
		"km_api_key=" + s.KM.RootAPIKey(),
		"minio_endpoint=" + s.MinIO.URL(),
		"root_password=" + s.MinIO.RootPassword,
	}
	rel := func(n *Node) string {
		r, err := filepath.Rel(s.Dir, n.EnvFile)
		if err != nil {
			r = n.EnvFile
		}
		return fmt.Sprintf("%q", filepath.ToSlash(r))
	}
	if len(s.MinIO.Nodes) == 1 {
		// One server and its one local file: the cutover matches them.
		return append(vars, "env_files=["+rel(s.MinIO.Nodes[0])+"]")
	}
	// Local files of several servers name the server each controls, as
	// MinIO lists it (ADDRESS:PORT).
	entries := make([]string, len(s.MinIO.Nodes))
	for i, n := range s.MinIO.Nodes {
		entries[i] = fmt.Sprintf("%q={env_file=%s}", strings.TrimPrefix(n.URL, "https://"), rel(n))
	}
	return append(vars, "nodes={"+strings.Join(entries, ",")+"}")
}

// Ports are every port the demo's servers listen on, for a check that they
// are free again once it ended: KES, the Key Manager and each node.
func Ports(dir string) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, err
	}
	addrs := []string{fmt.Sprintf("127.0.0.1:%d", st.KESPort), fmt.Sprintf("127.0.0.1:%d", st.KMPort)}
	for _, p := range st.NodePorts {
		addrs = append(addrs, net.JoinHostPort(st.Address, fmt.Sprint(p)))
	}
	return addrs, nil
}

// freePort returns a port of ip that was free a moment ago.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// clientTLS trusts only the CA in caFile.
func clientTLS(caFile string) (*tls.Config, error) { return devcert.ClientConfig(caFile) }
