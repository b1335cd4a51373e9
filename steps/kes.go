package steps

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/hcl/v2"
	kesserver "github.com/minio/kes"
	kes "github.com/minio/kes-go"
	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	engine.Register(engine.BlockType{
		Name:        "kes",
		Kind:        engine.KindConnection,
		New:         func() engine.Block { return &kesConnection{} },
		Credentials: []string{"api_key"}, // client_key is a file's path, not the key
		Doc:         "a KES server and the key store its config file names",
	})
}

var (
	_ engine.Block     = (*kesConnection)(nil)
	_ engine.Validator = (*kesConnection)(nil)
)

type kesConfig struct {
	Server     string `hcl:"server,optional"`
	APIKey     string `hcl:"api_key,optional"`
	ClientCert string `hcl:"client_cert,optional"`
	ClientKey  string `hcl:"client_key,optional"`
	CAFile     string `hcl:"ca_file,optional"`
	Insecure   bool   `hcl:"insecure,optional"`
	Config     string `hcl:"config,optional"`
	// ShowOtherSecrets names, in plans and logs, the entries of the key
	// store that are not KES keys (other applications' secrets in a store
	// KES shares); by default they are only counted, so that a change
	// request shared for review does not list another team's secrets.
	ShowOtherSecrets bool `hcl:"show_other_secrets,optional"`
}

// kesConnection is a connection to KES: its HTTP API (through kes-go) and,
// through the KES server config, its key store read directly (through KES's
// own kesconf), which is where migration reads key material.
type kesConnection struct {
	cfg kesConfig

	once   sync.Once
	client *kes.Client
	err    error
}

func (k *kesConnection) Config() any { return &k.cfg }

func (k *kesConnection) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if k.cfg.Server == "" && k.cfg.Config == "" && !d.Unknown("server") && !d.Unknown("config") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing server and config", Detail: "A kes block needs the server's address (server = \"https://…:7373\"), the KES server config file that names its key store (config = \"kes-config.yaml\"), or both.", Subject: &d.Range})
	}
	diags = append(diags, urlCredentialDiags(d, "server", "authenticate with api_key, given a sensitive variable, or with client_cert and client_key.", k.cfg.Server)...)
	if k.cfg.Server != "" {
		hasKey := k.cfg.APIKey != "" || d.Unknown("api_key")
		hasCert := k.cfg.ClientCert != "" || k.cfg.ClientKey != ""
		switch {
		case hasKey && hasCert:
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Conflicting credentials", Detail: "Give either api_key or client_cert and client_key, not both.", Subject: d.AttrRange("client_cert")})
		case !hasKey && !hasCert:
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing credentials", Detail: "A kes block with a server needs api_key (kes:v1:…) or client_cert and client_key.", Subject: &d.Range})
		case hasCert && (k.cfg.ClientCert == "" || k.cfg.ClientKey == ""):
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Incomplete client certificate", Detail: "client_cert and client_key go together.", Subject: &d.Range})
		}
		if k.cfg.APIKey != "" {
			if _, err := kes.ParseAPIKey(k.cfg.APIKey); err != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid KES API key", Detail: "api_key must be a KES API key, kes:v1:… (as kes identity new prints).", Subject: d.AttrRange("api_key")})
			}
		}
	}
	return diags
}

// HasServer reports whether a KES server is configured (the demo has none).
func (k *kesConnection) HasServer() bool { return k.cfg.Server != "" }

// Endpoint is the server's address.
func (k *kesConnection) Endpoint() string { return k.cfg.Server }

// Client returns a client of the KES server, built once.
func (k *kesConnection) Client(r *engine.Run) (*kes.Client, error) {
	k.once.Do(func() { k.client, k.err = k.newClient(r) })
	return k.client, k.err
}

// newClient makes the block's KES client, or takes the session's client
// for the same server, trust and identity (sharedClient).
func (k *kesConnection) newClient(r *engine.Run) (*kes.Client, error) {
	if k.cfg.Server == "" {
		return nil, fmt.Errorf("no KES server configured")
	}
	tlsCfg, trust, err := tlsConfigFor(r, k.cfg.CAFile, k.cfg.Insecure, oneHost(k.cfg.Server))
	if err != nil {
		return nil, err
	}
	var identity string
	if k.cfg.APIKey != "" {
		key, err := kes.ParseAPIKey(k.cfg.APIKey)
		if err != nil {
			return nil, fmt.Errorf("parse KES API key: %w", err)
		}
		cert, err := kes.GenerateCertificate(key)
		if err != nil {
			return nil, fmt.Errorf("make KES client certificate: %w", err)
		}
		tlsCfg.Certificates = append(tlsCfg.Certificates, cert)
		identity = "api key " + key.Identity().String()
	} else {
		certPEM, err := r.ReadFile(k.cfg.ClientCert)
		if err != nil {
			return nil, fmt.Errorf("read client certificate: %w", err)
		}
		keyPEM, err := r.ReadFile(k.cfg.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("read client key: %w", err)
		}
		r.AddSecret(string(keyPEM))
		cert, err := tlsX509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		tlsCfg.Certificates = append(tlsCfg.Certificates, cert)
		leaf := sha256.Sum256(cert.Certificate[0])
		identity = "certificate " + hex.EncodeToString(leaf[:])
	}
	key := clientKey{kind: "kes", endpoints: k.cfg.Server, trust: trust, identity: identity}
	return sharedClient(r, key, func() *kes.Client { return kes.NewClientWithConfig(k.cfg.Server, tlsCfg) }), nil
}

// ConfigFile is the KES server config's path, resolved.
func (k *kesConnection) ConfigFile(r *engine.Run) string { return r.Path(k.cfg.Config) }

// LoadConfig parses the KES server config with KES's own kesconf, which also
// validates it fully. The fs key store's path, when relative, is taken from
// the config file's folder.
func (k *kesConnection) LoadConfig(r *engine.Run) (*kesconf.File, error) {
	if k.cfg.Config == "" {
		return nil, fmt.Errorf("the kes block names no config file: set config = \"kes-config.yaml\" so the key store can be read")
	}
	raw, err := r.ReadFile(k.cfg.Config)
	if err != nil {
		return nil, fmt.Errorf("read KES config: %w", err)
	}
	// A config from Kubernetes: ${VAR} placeholders (steps/kes_config.go).
	raw, notes, err := expandKESConfig(raw, os.LookupEnv)
	if err != nil {
		return nil, fmt.Errorf("read KES config %s: %w", k.ConfigFile(r), err)
	}
	for _, n := range notes {
		r.Logf("KES config %s: %s", k.cfg.Config, n)
	}
	f, err := kesconf.ReadFrom(bytes.NewReader(raw))
	if err != nil {
		if why := kesInClusterOnly(raw); why != "" {
			return nil, kesInClusterError(why, err)
		}
		return nil, fmt.Errorf("parse KES config %s: %w", k.ConfigFile(r), err)
	}
	if fs, ok := f.KeyStore.(*kesconf.FSKeyStore); ok && !filepath.IsAbs(fs.Path) {
		fs.Path = filepath.Join(filepath.Dir(k.ConfigFile(r)), fs.Path)
	}
	return f, nil
}

// OpenKeyStore connects to the key store the KES config names.
func (k *kesConnection) OpenKeyStore(ctx context.Context, r *engine.Run) (kesserver.KeyStore, *kesconf.File, error) {
	f, err := k.LoadConfig(r)
	if err != nil {
		return nil, nil, err
	}
	// KES's fs store makes its directory when it is missing (kes@v0.24.0
	// internal/keystore/fs NewStore: MkdirAll): a plan must change nothing,
	// and a KES server that ever ran has made it.
	if fs, ok := f.KeyStore.(*kesconf.FSKeyStore); ok {
		if _, err := os.Stat(fs.Path); errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("the fs key store %s named in %s does not exist: is the path right? (a KES server makes it when it starts; the runbook makes nothing)", fs.Path, k.ConfigFile(r))
		}
	}
	ks, err := f.KeyStore.Connect(ctx)
	if err != nil {
		if raw, rerr := r.ReadFile(k.cfg.Config); rerr == nil {
			if why := kesInClusterOnly(raw); why != "" {
				return nil, nil, kesInClusterError(why, err)
			}
		}
		return nil, nil, fmt.Errorf("connect to the key store named in %s: %w", k.ConfigFile(r), err)
	}
	return fastKeyStore(ks, f), f, nil
}
