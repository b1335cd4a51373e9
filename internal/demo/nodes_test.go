package demo

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// markers makes the container marker files of MinIO's check these, for the
// test's duration.
func markers(t *testing.T, files ...string) {
	saved := containerMarkers
	containerMarkers = files
	t.Cleanup(func() { containerMarkers = saved })
}

func TestPlanNodes(t *testing.T) {
	dockerenv := filepath.Join(t.TempDir(), ".dockerenv")
	if err := os.WriteFile(dockerenv, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	absent := filepath.Join(t.TempDir(), ".containerenv")
	cases := []struct {
		name     string
		markers  []string
		asked    int
		address  string
		nodes    int
		why, err string
	}{
		{name: "not a container", markers: []string{absent}, nodes: ClusterNodes},
		{name: "not a container, asked", markers: []string{absent}, asked: 2, address: "127.0.0.1", nodes: 2},
		{name: "container", markers: []string{absent, dockerenv}, nodes: 1, why: "this machine is a container (" + dockerenv + " exists)"},
		{name: "container, one asked", markers: []string{dockerenv}, asked: 1, nodes: 1},
		{name: "container, several asked", markers: []string{dockerenv}, asked: 3, err: "3 nodes on 127.0.0.1: this machine is a container"},
		{name: "container, another loopback", markers: []string{dockerenv}, asked: 2, address: "127.0.0.2", err: "2 nodes on 127.0.0.2"},
		{name: "not this machine", markers: []string{absent}, address: "192.0.2.1", err: "192.0.2.1 is not an address of this machine"},
		{name: "not an IP", markers: []string{absent}, address: "localhost", err: "is not an IP address"},
		{name: "negative", markers: []string{absent}, asked: -1, err: "--nodes -1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			markers(t, c.markers...)
			nodes, why, err := PlanNodes(c.asked, c.address)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("PlanNodes(%d, %q) = %d, %v; want an error with %q", c.asked, c.address, nodes, err, c.err)
				}
				return
			}
			if err != nil || nodes != c.nodes || !strings.Contains(why, c.why) || (c.why == "") != (why == "") {
				t.Fatalf("PlanNodes(%d, %q) = %d, %q, %v; want %d, %q", c.asked, c.address, nodes, why, err, c.nodes, c.why)
			}
		})
	}
}

// The restart command outside a running demo says why it cannot restart.
func TestRestartNodeWithoutDemo(t *testing.T) {
	dir := t.TempDir()
	if _, err := RestartNode(context.Background(), dir, ""); err == nil || !strings.Contains(err.Error(), "RUNBOOK_ENV_FILE") {
		t.Errorf("RestartNode without a node: %v", err)
	}
	if _, err := RestartNode(context.Background(), dir, filepath.Join(dir, "nodes", "node1", "minio.env")); err == nil || !strings.Contains(err.Error(), "no demo runs in "+dir) {
		t.Errorf("RestartNode without a demo: %v", err)
	}
}
