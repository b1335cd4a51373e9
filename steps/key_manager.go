package steps

import (
	"fmt"
	"strings"
	"sync"

	"aead.dev/mtls"
	"github.com/hashicorp/hcl/v2"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	engine.Register(engine.BlockType{
		Name:        "key_manager",
		Kind:        engine.KindConnection,
		New:         func() engine.Block { return &keyManagerConnection{} },
		Credentials: []string{"api_key"},
		Doc:         "an AIStor Key Manager cluster, reached with a k1: API key",
	})
}

var (
	_ engine.Block     = (*keyManagerConnection)(nil)
	_ engine.Validator = (*keyManagerConnection)(nil)
)

type keyManagerConfig struct {
	Servers  []string `hcl:"servers"`
	APIKey   string   `hcl:"api_key"`
	CAFile   string   `hcl:"ca_file,optional"`
	Insecure bool     `hcl:"insecure,optional"`
}

// keyManagerConnection talks to the Key Manager through the vendor's client.
type keyManagerConnection struct {
	cfg keyManagerConfig

	once   sync.Once
	client *kms.Client
	err    error
}

func (k *keyManagerConnection) Config() any { return &k.cfg }

func (k *keyManagerConnection) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if len(k.cfg.Servers) == 0 && !d.Unknown("servers") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing servers", Detail: "servers lists the Key Manager's nodes (or a load balancer), for example [\"https://kms-1.example.net:7373\"].", Subject: d.AttrRange("servers")})
	}
	diags = append(diags, urlCredentialDiags(d, "servers", "the Key Manager authenticates with api_key, given a sensitive variable.", k.cfg.Servers...)...)
	diags = append(diags, requireNonEmpty(d, "api_key", k.cfg.APIKey, "api_key is the Key Manager's SysAdmin API key, k1:…")...)
	if k.cfg.APIKey != "" {
		if _, err := mtls.ParsePrivateKey(k.cfg.APIKey); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid Key Manager API key", Detail: "api_key must be a Key Manager API key, k1:… (as minkms add-identity prints).", Subject: d.AttrRange("api_key")})
		}
	}
	return diags
}

// Endpoints are the servers as MinIO's MINIO_KMS_SERVER wants them: comma
// separated, scheme included.
func (k *keyManagerConnection) Endpoints() []string { return k.cfg.Servers }

// Client returns the vendor client, built once.
func (k *keyManagerConnection) Client(r *engine.Run) (*kms.Client, error) {
	k.once.Do(func() { k.client, k.err = k.newClient(r) })
	return k.client, k.err
}

// newClient makes the block's Key Manager client, or takes the session's
// client for the same servers, trust and identity (sharedClient).
func (k *keyManagerConnection) newClient(r *engine.Run) (*kms.Client, error) {
	key, err := mtls.ParsePrivateKey(k.cfg.APIKey)
	if err != nil {
		return nil, fmt.Errorf("parse Key Manager API key: %w", err)
	}
	return k.ClientAs(r, key)
}

// ClientAs returns a client for the block's servers and trust that
// authenticates as key instead of the block's own identity: the cutover
// asks with it what the nodes will ask with the API key it writes into
// them. Clients are shared per servers, trust and identity (sharedClient).
func (k *keyManagerConnection) ClientAs(r *engine.Run, key mtls.PrivateKey) (*kms.Client, error) {
	// The client needs a non-nil TLS config with an API key (kms-go bug,
	// docs/domain.md, "Key Manager transport"); it adds the client certificate itself.
	tlsCfg, trust, err := tlsConfigFor(r, k.cfg.CAFile, k.cfg.Insecure, oneHost(k.cfg.Servers...))
	if err != nil {
		return nil, err
	}
	endpoints := make([]string, len(k.cfg.Servers))
	for i, s := range k.cfg.Servers {
		endpoints[i] = strings.TrimPrefix(s, "https://")
	}
	type made struct {
		c   *kms.Client
		err error
	}
	ck := clientKey{kind: "key_manager", endpoints: strings.Join(endpoints, " "), trust: trust, identity: key.Identity().String()}
	m := sharedClient(r, ck, func() made {
		c, err := kms.NewClient(&kms.Config{Endpoints: endpoints, APIKey: key, TLS: tlsCfg})
		return made{c, err}
	})
	if m.err != nil {
		return nil, fmt.Errorf("make Key Manager client: %w", m.err)
	}
	return m.c, nil
}
