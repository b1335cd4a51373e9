package steps

import (
	"context"
	"strings"
	"testing"

	"github.com/zclconf/go-cty/cty"
)

// fakeDNS resolves the names of these tests only (an IP resolves to itself).
func fakeDNS(names map[string][]string) resolver {
	return func(_ context.Context, host string) []string {
		if addrs, ok := names[host]; ok {
			return addrs
		}
		return systemResolverIPOnly(host)
	}
}

func systemResolverIPOnly(host string) []string {
	if strings.Trim(host, "0123456789.:abcdef") == "" {
		return []string{host}
	}
	return nil
}

func servers(eps ...string) []storeServer {
	var out []storeServer
	for i, ep := range eps {
		out = append(out, storeServer{Endpoint: ep, Pools: []int{i/4 + 1}})
	}
	return out
}

func TestMatchNodes(t *testing.T) {
	dns := fakeDNS(map[string][]string{
		"minio1.example.net": {"10.0.0.1"},
		"minio2.example.net": {"10.0.0.2"},
		"alias.example.net":  {"10.0.0.1"},
		"minio5.example.net": {"10.0.0.5"},
	})
	four := servers("minio1.example.net:9000", "minio2.example.net:9000", "10.0.0.3:9000", "10.0.0.4:9000")
	ssh := func(host string) fileRef {
		return fileRef{Name: "ssh://minio@" + host + "/etc/default/minio", Host: host}
	}
	named := func(server, path string) fileRef { return fileRef{Name: path, Server: server} }
	for _, c := range []struct {
		name    string
		servers []storeServer
		files   []fileRef
		want    []string // per server: the file's name
		problem []string // substrings of the problems, all of them
	}{
		{
			name:    "ssh by host: names, IPs, and a DNS name against an IP",
			servers: four,
			files:   []fileRef{ssh("10.0.0.1"), ssh("minio2.example.net"), ssh("10.0.0.3"), ssh("10.0.0.4")},
			want:    []string{"ssh://minio@10.0.0.1/etc/default/minio", "ssh://minio@minio2.example.net/etc/default/minio", "ssh://minio@10.0.0.3/etc/default/minio", "ssh://minio@10.0.0.4/etc/default/minio"},
		},
		{
			name:    "a DNS alias in nodes names the server started under its other name",
			servers: servers("minio1.example.net:9000", "minio2.example.net:9000"),
			files:   []fileRef{named("alias.example.net:9000", "/srv/1.env"), named("minio2.example.net:9000", "/srv/2.env")},
			want:    []string{"/srv/1.env", "/srv/2.env"},
		},
		{
			name:    "one file of four servers (the flagship's default)",
			servers: four,
			files:   []fileRef{{Name: "/etc/default/minio"}},
			problem: []string{"4 of the object store's 4 servers have no env file: minio1.example.net:9000 (pool 1), minio2.example.net:9000 (pool 1), 10.0.0.3:9000 (pool 1), 10.0.0.4:9000 (pool 1)", "env file /etc/default/minio matches no server (a local file names no server"},
		},
		{
			name:    "two of four",
			servers: four,
			files:   []fileRef{ssh("10.0.0.1"), ssh("10.0.0.2")},
			problem: []string{"2 of the object store's 4 servers have no env file: 10.0.0.3:9000 (pool 1), 10.0.0.4:9000 (pool 1)"},
		},
		{
			name:    "a file that matches no server",
			servers: servers("minio1.example.net:9000"),
			files:   []fileRef{ssh("10.0.0.1"), ssh("minio5.example.net")},
			problem: []string{"env file ssh://minio@minio5.example.net/etc/default/minio matches no server (no server of the object store runs on minio5.example.net)"},
		},
		{
			name:    "a nodes key on the right host but another port",
			servers: servers("10.0.0.1:9000", "10.0.0.1:9001"),
			files:   []fileRef{named("10.0.0.1:9000", "/a.env"), named("10.0.0.1:9002", "/b.env")},
			problem: []string{"10.0.0.1:9001 (pool 1)", "env file /b.env matches no server (the object store lists no server 10.0.0.1:9002)"},
		},
		{
			name:    "two servers on one ssh host cannot share a file",
			servers: servers("10.0.0.1:9000", "10.0.0.1:9001"),
			files:   []fileRef{ssh("10.0.0.1")},
			problem: []string{"matches 2 servers on one host (10.0.0.1:9000, 10.0.0.1:9001)"},
		},
		{
			name:    "servers of two pools, one named, one by ssh",
			servers: servers("10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000", "10.0.0.4:9000", "10.0.0.5:9000"),
			files:   []fileRef{ssh("10.0.0.1"), ssh("10.0.0.2"), ssh("10.0.0.3"), ssh("10.0.0.4"), named("minio5.example.net:9000", "/pool2.env")},
			want:    []string{"ssh://minio@10.0.0.1/etc/default/minio", "ssh://minio@10.0.0.2/etc/default/minio", "ssh://minio@10.0.0.3/etc/default/minio", "ssh://minio@10.0.0.4/etc/default/minio", "/pool2.env"},
		},
		{
			name:    "a pool-2 server left out is named with its pool",
			servers: servers("10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000", "10.0.0.4:9000", "10.0.0.5:9000"),
			files:   []fileRef{ssh("10.0.0.1"), ssh("10.0.0.2"), ssh("10.0.0.3"), ssh("10.0.0.4")},
			problem: []string{"1 of the object store's 5 servers have no env file: 10.0.0.5:9000 (pool 2)"},
		},
		{
			name:    "one server, one local file",
			servers: servers("127.0.0.1:9000"),
			files:   []fileRef{{Name: "/etc/default/minio"}},
			want:    []string{"/etc/default/minio"},
		},
		{
			name:    "one server behind another name, one ssh file",
			servers: servers("lb.example.net:443"),
			files:   []fileRef{ssh("10.0.0.9")},
			want:    []string{"ssh://minio@10.0.0.9/etc/default/minio"},
		},
		{
			name:    "a server matched twice",
			servers: servers("10.0.0.1:9000"),
			files:   []fileRef{named("10.0.0.1:9000", "/a.env"), named("alias.example.net:9000", "/b.env")},
			problem: []string{"server 10.0.0.1:9000 (pool 1) is matched by 2 env files (/a.env, /b.env)"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, problems := matchNodes(context.Background(), c.servers, c.files, dns)
			if len(c.problem) == 0 {
				if len(problems) > 0 {
					t.Fatalf("problems: %q", problems)
				}
				for i, m := range got {
					if m.File.Name != c.want[i] || m.Server.Endpoint != c.servers[i].Endpoint {
						t.Errorf("server %s ← %s (%s), want %s", m.Server.Endpoint, m.File.Name, m.How, c.want[i])
					}
				}
				return
			}
			if got != nil {
				t.Errorf("matches despite problems: %+v", got)
			}
			all := strings.Join(problems, "\n")
			for _, p := range c.problem {
				if !strings.Contains(all, p) {
					t.Errorf("problems lack %q:\n%s", p, all)
				}
			}
		})
	}
}

func TestParseNodeSpecs(t *testing.T) {
	v := cty.ObjectVal(map[string]cty.Value{
		"10.0.0.1:9000": cty.ObjectVal(map[string]cty.Value{"env_file": cty.StringVal("/srv/1.env")}),
		"10.0.0.2:9000": cty.ObjectVal(map[string]cty.Value{
			"env_file":        cty.StringVal("/srv/2.env"),
			"restart_command": cty.TupleVal([]cty.Value{cty.StringVal("systemctl"), cty.StringVal("restart"), cty.StringVal("minio@2")}),
			"certs_dir":       cty.StringVal("/etc/minio/certs"),
		}),
	})
	specs, problems := parseNodeSpecs(v)
	if len(problems) > 0 || len(specs) != 2 {
		t.Fatalf("specs %+v, problems %q", specs, problems)
	}
	if s := specs[1]; s.Server != "10.0.0.2:9000" || s.EnvFile != "/srv/2.env" || strings.Join(s.RestartCommand, " ") != "systemctl restart minio@2" || s.CertsDir != "/etc/minio/certs" {
		t.Errorf("spec %+v", s)
	}
	for bad, want := range map[string]cty.Value{
		"name the server as HOST:PORT": cty.ObjectVal(map[string]cty.Value{"minio1": cty.ObjectVal(map[string]cty.Value{"env_file": cty.StringVal("/x")})}),
		"names no env_file":            cty.ObjectVal(map[string]cty.Value{"h:9000": cty.ObjectVal(map[string]cty.Value{"certs_dir": cty.StringVal("/x")})}),
		"a node takes only":            cty.ObjectVal(map[string]cty.Value{"h:9000": cty.ObjectVal(map[string]cty.Value{"env_file": cty.StringVal("/x"), "envfile": cty.StringVal("/y")})}),
		"must be an object":            cty.ObjectVal(map[string]cty.Value{"h:9000": cty.StringVal("/x")}),
		"must be an argv list":         cty.ObjectVal(map[string]cty.Value{"h:9000": cty.ObjectVal(map[string]cty.Value{"env_file": cty.StringVal("/x"), "restart_command": cty.StringVal("restart")})}),
	} {
		_, problems := parseNodeSpecs(want)
		if !strings.Contains(strings.Join(problems, "\n"), bad) {
			t.Errorf("problems %q lack %q", problems, bad)
		}
	}
}
