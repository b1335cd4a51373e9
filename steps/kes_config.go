package steps

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/runbook-dev/runbook/engine"
)

// A KES config taken from Kubernetes (the Secret the MinIO Operator mounts
// into the KES pod, or a Helm chart's) refers to the pod's environment with
// ${VAR} placeholders (kesconf resolves them with os.LookupEnv, kes
// kesconf/config.go env.UnmarshalYAML), most often ${MINIO_KES_IDENTITY} in
// the policy of MinIO's identity, and may log in to Vault with the pod's
// service-account token or name a key store by its cluster address.
// Migration reads only the key store section: a placeholder anywhere else
// that is not set here is filled with an inert value of the right shape; one
// inside the key store must be set (it is a credential or an address
// migration needs), and the error says which and where.

// kesInertValue is the stand-in for an unset placeholder at path (the YAML
// keys leading to it); identities get distinct values, as kesconf refuses
// an identity that is both admin and in a policy.
func kesInertValue(path []string) string {
	key := ""
	if len(path) > 0 {
		key = path[len(path)-1]
	}
	if len(path) > 1 && strings.HasPrefix(key, "[") {
		key = path[len(path)-2]
	}
	switch key {
	case "identity", "identities":
		sum := sha256.Sum256([]byte("runbook inert identity " + strings.Join(path, ".")))
		return hex.EncodeToString(sum[:])
	case "timeout", "expiry", "any", "unused", "offline", "ping":
		return "1m"
	case "skip_auth", "auth":
		return "false"
	}
	return "runbook-inert-" + strings.Join(path, ".")
}

// expandKESConfig fills the unset ${VAR} placeholders outside the key store
// section with inert values. It returns the config to parse and one note per
// placeholder filled; an unset placeholder inside the key store is an error
// naming each.
func expandKESConfig(raw []byte, lookup func(string) (string, bool)) ([]byte, []string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return raw, nil, nil // kesconf reports the syntax error in its words
	}
	var notes, missing []string
	var walk func(n *yaml.Node, path []string)
	walk = func(n *yaml.Node, path []string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], append(path[:len(path):len(path)], n.Content[i].Value))
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, append(path[:len(path):len(path)], fmt.Sprintf("[%d]", i)))
			}
		case yaml.ScalarNode:
			v := strings.TrimSpace(n.Value)
			if !strings.HasPrefix(v, "${") || !strings.HasSuffix(v, "}") {
				return
			}
			name := strings.TrimSpace(v[2 : len(v)-1])
			if _, ok := lookup(name); ok {
				return
			}
			at := strings.Join(path, ".")
			if len(path) > 0 && path[0] == "keystore" {
				missing = append(missing, fmt.Sprintf("${%s} at %s (line %d)", name, at, n.Line))
				return
			}
			n.Value, n.Style = kesInertValue(path), 0
			notes = append(notes, fmt.Sprintf("${%s} at %s is not set here: filled with an inert value (migration reads only the key store)", name, at))
		}
	}
	walk(&doc, nil)
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("the key store section of the KES config refers to variables that are not set here: %s; they come from the KES pod's environment (its Secret): set each in runbook's environment with the value the pod gets, or run runbook as a Job in the cluster with the KES pod's environment (docs/kubernetes.md)", strings.Join(missing, ", "))
	}
	if len(notes) == 0 {
		return raw, nil, nil
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, nil, fmt.Errorf("fill KES config placeholders: %w", err)
	}
	return out, notes, nil
}

// serviceAccountTokenDir is where a pod's service-account token is mounted.
const serviceAccountTokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// kesInClusterOnly says why the key store of a KES config can be reached
// only from inside the cluster ("" when nothing says so): a Vault login
// with the KES pod's service-account token that is not on this host, or an
// endpoint at a cluster address.
func kesInClusterOnly(raw []byte) string {
	var conf struct {
		KeyStore map[string]struct {
			Endpoint   any `yaml:"endpoint"`
			Kubernetes *struct {
				JWT string `yaml:"jwt"`
			} `yaml:"kubernetes"`
		} `yaml:"keystore"`
	}
	if yaml.Unmarshal(raw, &conf) != nil {
		return ""
	}
	for kind, ks := range conf.KeyStore {
		if ks.Kubernetes != nil && strings.ContainsRune(ks.Kubernetes.JWT, '/') {
			if _, err := os.Stat(ks.Kubernetes.JWT); err != nil {
				return fmt.Sprintf("the %s key store logs in with the KES pod's service-account token (kubernetes auth, jwt = %s), which exists only inside the cluster", kind, ks.Kubernetes.JWT)
			}
		}
		var eps []string
		switch e := ks.Endpoint.(type) {
		case string:
			eps = []string{e}
		case []any:
			for _, x := range e {
				eps = append(eps, fmt.Sprint(x))
			}
		}
		for _, ep := range eps {
			host := ep
			if u, err := url.Parse(ep); err == nil && u.Hostname() != "" {
				host = u.Hostname()
			}
			if strings.HasSuffix(host, ".svc") || strings.Contains(host, ".svc.") || strings.HasSuffix(host, ".cluster.local") {
				return fmt.Sprintf("the %s key store is at the cluster address %s, which resolves only inside the cluster", kind, ep)
			}
		}
	}
	return ""
}

// kesInClusterError is the error for a key store reachable only in the
// cluster: what it is, and the ways forward.
func kesInClusterError(why string, cause error) error {
	return engine.Refusef("%s (%v): run runbook inside the cluster as a Job with the KES pod's service account (docs/kubernetes.md has a ready manifest), or give runbook a KES config whose key store it can reach from here (a port-forward to the key store, and a token or AppRole it may use)", why, cause)
}
