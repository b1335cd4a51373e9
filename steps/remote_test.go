package steps

import "testing"

func TestParseEnvNode(t *testing.T) {
	t.Parallel()
	n, err := parseEnvNode("ssh://root@10.0.0.1:2222/etc/default/minio")
	if err != nil || n.Host != "10.0.0.1:2222" || n.User != "root" || n.Path != "/etc/default/minio" {
		t.Fatalf("got %+v, %v", n, err)
	}
	if n, err := parseEnvNode("ssh://minio@node2/etc/default/minio"); err != nil || n.Host != "node2:22" {
		t.Fatalf("default port: %+v, %v", n, err)
	}
	for _, bad := range []string{"ssh://node/etc/x", "ssh://u:pw@node/etc/x", "http://node/x", "ssh://u@node"} {
		if _, err := parseEnvNode(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
