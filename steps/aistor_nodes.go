package steps

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/zclconf/go-cty/cty"
)

// The node model on Linux: which env file (and restart command) controls
// which server of the object store. The servers are what the object store
// itself lists, every pool (madmin ServerInfo, Servers[].Endpoint: the
// host:port a distributed MinIO was started with). An env file is matched
// to its server in one of three ways:
//
//	nodes = { "HOST:PORT" = { env_file = … } }   named by the runbook: the key is the server
//	env_files = ["ssh://user@HOST/path"]          by host: the server on that host
//	env_files = ["/etc/default/minio"]            the only file of a one-server store
//
// Hosts match when their names are equal or, resolved on this host, they
// share an address (a server started with a DNS name and an ssh URL with
// its IP address are the same host). Every server must be matched by
// exactly one file, and every file by exactly one server (matchNodes).

// nodeSpec is one entry of the aistor block's nodes map.
type nodeSpec struct {
	Server         string   // the map key: HOST:PORT as the object store lists the server
	EnvFile        string   // local path or ssh://user@host[:port]/path
	RestartCommand []string // overrides the aistor block's restart_command for this node
	CertsDir       string   // where this node's MinIO loads certs/CAs from
}

// nodeSpecAttrs are the attributes a nodes entry may set.
var nodeSpecAttrs = []string{"env_file", "restart_command", "certs_dir"}

// parseNodeSpecs reads the nodes attribute: a map (or object) from
// "HOST:PORT" to an object with env_file and, optionally, restart_command
// and certs_dir. It returns every problem, each a sentence.
func parseNodeSpecs(v cty.Value) ([]nodeSpec, []string) {
	if v == cty.NilVal || v.IsNull() || !v.IsKnown() {
		return nil, nil
	}
	if !v.Type().IsMapType() && !v.Type().IsObjectType() {
		return nil, []string{"nodes maps each server to its env file: nodes = { \"HOST:PORT\" = { env_file = \"/path/to/env\" } }"}
	}
	var specs []nodeSpec
	var problems []string
	for it := v.ElementIterator(); it.Next(); {
		k, ev := it.Element()
		server := k.AsString()
		if err := checkServerName(server); err != nil {
			problems = append(problems, fmt.Sprintf("nodes key %q: %v", server, err))
			continue
		}
		s := nodeSpec{Server: server}
		if ev.IsNull() || !(ev.Type().IsObjectType() || ev.Type().IsMapType()) {
			problems = append(problems, fmt.Sprintf("nodes[%q] must be an object: { env_file = \"/path/to/env\" }", server))
			continue
		}
		attrs := ev.AsValueMap()
		for name := range attrs {
			if !slices.Contains(nodeSpecAttrs, name) {
				problems = append(problems, fmt.Sprintf("nodes[%q] sets %s: a node takes only %s", server, name, strings.Join(nodeSpecAttrs, ", ")))
			}
		}
		str := func(name string) string {
			a, ok := attrs[name]
			if !ok || a.IsNull() || !a.IsKnown() {
				return ""
			}
			if a.Type() != cty.String {
				problems = append(problems, fmt.Sprintf("nodes[%q].%s must be a string", server, name))
				return ""
			}
			return a.AsString()
		}
		s.EnvFile, s.CertsDir = str("env_file"), str("certs_dir")
		if s.EnvFile == "" {
			problems = append(problems, fmt.Sprintf("nodes[%q] names no env_file: write { env_file = \"/path/to/env\" }, the file that server's MinIO reads its environment from", server))
		}
		if rc, ok := attrs["restart_command"]; ok && !rc.IsNull() && rc.IsKnown() {
			if !rc.CanIterateElements() || rc.Type().IsMapType() || rc.Type().IsObjectType() {
				problems = append(problems, fmt.Sprintf("nodes[%q].restart_command must be an argv list, for example [\"systemctl\", \"restart\", \"minio\"]", server))
			} else {
				for it := rc.ElementIterator(); it.Next(); {
					_, a := it.Element()
					if a.IsNull() || a.Type() != cty.String {
						problems = append(problems, fmt.Sprintf("nodes[%q].restart_command must be a list of strings", server))
						break
					}
					s.RestartCommand = append(s.RestartCommand, a.AsString())
				}
			}
		}
		specs = append(specs, s)
	}
	sort.Slice(specs, func(i, j int) bool { return specs[i].Server < specs[j].Server })
	return specs, problems
}

// checkServerName accepts HOST:PORT, the form `mc admin info` lists
// servers in.
func checkServerName(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf("name the server as HOST:PORT, as `mc admin info` lists it (for example \"minio1.example.net:9000\")")
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("port %q is not a port number", port)
	}
	return nil
}

// storeServer is one server of the object store as it lists itself.
type storeServer struct {
	Endpoint string // host:port
	Pools    []int  // pool numbers, from 1 (MinIO cmd/admin-server-info.go: PoolIdx+1)
	State    string
	Version  string            // MinIO's Version: an RFC 3339 time for a release build
	Env      map[string]string // its MINIO_* environment, secrets redacted by MinIO
}

func (s storeServer) host() string {
	h, _, err := net.SplitHostPort(s.Endpoint)
	if err != nil {
		return s.Endpoint
	}
	return h
}

func (s storeServer) firstPool() int {
	if len(s.Pools) == 0 {
		return 0
	}
	return s.Pools[0]
}

// poolsLabel says which pools a server serves ("pool 1", "pools 1, 2").
func (s storeServer) poolsLabel() string {
	if len(s.Pools) == 0 {
		return ""
	}
	var n []string
	for _, p := range s.Pools {
		n = append(n, strconv.Itoa(p))
	}
	if len(n) == 1 {
		return "pool " + n[0]
	}
	return "pools " + strings.Join(n, ", ")
}

// fileRef is one env file and how it names its server.
type fileRef struct {
	Name   string // as written in the runbook
	Server string // named by nodes: HOST:PORT
	Host   string // an ssh:// file: the host it is on (no port)
}

// resolver looks a host name up; an IP address resolves to itself.
type resolver func(ctx context.Context, host string) []string

func systemResolver(ctx context.Context, host string) []string {
	if ip := net.ParseIP(host); ip != nil {
		return []string{ip.String()}
	}
	addrs, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		return nil
	}
	return addrs
}

// sameHost reports whether two host names are the same host: equal names,
// or names that resolve to a shared address.
func sameHost(ctx context.Context, resolve resolver, a, b string) bool {
	a, b = strings.ToLower(strings.TrimSuffix(a, ".")), strings.ToLower(strings.TrimSuffix(b, "."))
	if a == b {
		return true
	}
	ra, rb := resolve(ctx, a), resolve(ctx, b)
	for _, x := range ra {
		ix := net.ParseIP(x)
		for _, y := range rb {
			if iy := net.ParseIP(y); ix != nil && iy != nil && ix.Equal(iy) {
				return true
			}
		}
	}
	return false
}

// nodeMatch pairs a server with the file that controls it.
type nodeMatch struct {
	Server storeServer
	File   fileRef
	How    string // why they match, for the plan
}

// matchNodes pairs every server with the env file that controls it. It
// returns the pairs (in the servers' order) and, when that is not a
// one-to-one pairing, every problem: servers no file covers, files that
// match no server, and files or servers matched more than once.
func matchNodes(ctx context.Context, servers []storeServer, files []fileRef, resolve resolver) ([]nodeMatch, []string) {
	m := &nodeMatcher{
		servers: servers, files: files,
		byServer: make([][]int, len(servers)), byFile: make([][]int, len(files)),
		how: map[[2]int]string{},
	}
	named := m.matchNamed(ctx, resolve)
	m.matchByHost(ctx, resolve, named)
	// One file and one server: nothing to tell apart.
	if len(files) == 1 && len(servers) == 1 && len(m.byFile[0]) == 0 && files[0].Server == "" {
		m.add(0, 0, "the only server and the only env file")
	}
	if problems := append(m.serverProblems(), m.fileProblems()...); len(problems) > 0 {
		return nil, problems
	}
	out := make([]nodeMatch, len(servers))
	for si, s := range servers {
		fi := m.byServer[si][0]
		out[si] = nodeMatch{Server: s, File: files[fi], How: m.how[[2]int{si, fi}]}
	}
	return out, nil
}

// nodeMatcher holds the matches found so far, both ways, by index.
type nodeMatcher struct {
	servers  []storeServer
	files    []fileRef
	byServer [][]int           // server → files matching it
	byFile   [][]int           // file → servers it matches
	how      map[[2]int]string // {server, file} → why they match
}

func (m *nodeMatcher) add(si, fi int, why string) {
	m.byServer[si] = append(m.byServer[si], fi)
	m.byFile[fi] = append(m.byFile[fi], si)
	m.how[[2]int{si, fi}] = why
}

// matchNamed matches the files a nodes entry names a server for (HOST:PORT,
// the host by name or address) and returns the servers so named.
func (m *nodeMatcher) matchNamed(ctx context.Context, resolve resolver) map[int]bool {
	named := map[int]bool{}
	for fi, f := range m.files {
		if f.Server == "" {
			continue
		}
		fh, fp, _ := net.SplitHostPort(f.Server)
		for si, s := range m.servers {
			sh, sp, err := net.SplitHostPort(s.Endpoint)
			if err != nil || sp != fp || !sameHost(ctx, resolve, sh, fh) {
				continue
			}
			why := "named in nodes"
			if !strings.EqualFold(sh, fh) {
				why = fmt.Sprintf("named in nodes as %s, the same host", f.Server)
			}
			m.add(si, fi, why)
			named[si] = true
		}
	}
	return named
}

// matchByHost matches each ssh:// file to the servers on its host that no
// nodes entry named.
func (m *nodeMatcher) matchByHost(ctx context.Context, resolve resolver, named map[int]bool) {
	for fi, f := range m.files {
		if f.Host == "" || f.Server != "" {
			continue
		}
		for si, s := range m.servers {
			if named[si] || !sameHost(ctx, resolve, s.host(), f.Host) {
				continue
			}
			why := "on the ssh host " + f.Host
			if !strings.EqualFold(s.host(), f.Host) {
				why = fmt.Sprintf("on the ssh host %s (%s resolves to the same address)", f.Host, s.host())
			}
			m.add(si, fi, why)
		}
	}
}

// serverProblems names the servers no file covers (first, in one line)
// and those more than one file matches.
func (m *nodeMatcher) serverProblems() []string {
	var problems, uncovered []string
	for si, s := range m.servers {
		switch len(m.byServer[si]) {
		case 0:
			uncovered = append(uncovered, serverLabel(s))
		case 1:
		default:
			var names []string
			for _, fi := range m.byServer[si] {
				names = append(names, m.files[fi].Name)
			}
			problems = append(problems, fmt.Sprintf("server %s is matched by %d env files (%s): name each server's own file in nodes", serverLabel(s), len(names), strings.Join(names, ", ")))
		}
	}
	if len(uncovered) > 0 {
		problems = append([]string{fmt.Sprintf("%d of the object store's %d servers have no env file: %s", len(uncovered), len(m.servers), strings.Join(uncovered, ", "))}, problems...)
	}
	return problems
}

// fileProblems names the files that match no server, saying why, and those
// that match several.
func (m *nodeMatcher) fileProblems() []string {
	var problems []string
	for fi, f := range m.files {
		switch len(m.byFile[fi]) {
		case 0:
			why := ""
			switch {
			case f.Server != "":
				why = fmt.Sprintf(" (the object store lists no server %s)", f.Server)
			case f.Host != "":
				why = fmt.Sprintf(" (no server of the object store runs on %s)", f.Host)
			default:
				why = " (a local file names no server: map it in nodes)"
			}
			problems = append(problems, fmt.Sprintf("env file %s matches no server%s", f.Name, why))
		case 1:
		default:
			var names []string
			for _, si := range m.byFile[fi] {
				names = append(names, m.servers[si].Endpoint)
			}
			problems = append(problems, fmt.Sprintf("env file %s matches %d servers on one host (%s): one file cannot be told apart for each; name each server's own file in nodes", f.Name, len(names), strings.Join(names, ", ")))
		}
	}
	return problems
}

func serverLabel(s storeServer) string {
	if p := s.poolsLabel(); p != "" {
		return s.Endpoint + " (" + p + ")"
	}
	return s.Endpoint
}
