package steps

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2"
	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	engine.Register(engine.BlockType{
		Name:        "aistor",
		Kind:        engine.KindConnection,
		New:         func() engine.Block { return &aistorConnection{} },
		Credentials: []string{"secret_key"}, // access_key names the user, as a login name does
		Doc:         "a MinIO/AIStor deployment: its S3 and admin APIs and every node's environment file",
	})
}

var (
	_ engine.Block     = (*aistorConnection)(nil)
	_ engine.Validator = (*aistorConnection)(nil)
)

type aistorConfig struct {
	Endpoint  string   `hcl:"endpoint"`
	AccessKey string   `hcl:"access_key"`
	SecretKey string   `hcl:"secret_key"`
	CAFile    string   `hcl:"ca_file,optional"`
	Insecure  bool     `hcl:"insecure,optional"`
	EnvFiles  []string `hcl:"env_files,optional"`
	// Nodes names the server each env file controls (aistor_nodes.go):
	// "HOST:PORT" → { env_file, restart_command, certs_dir }.
	Nodes          cty.Value `hcl:"nodes,optional"`
	CertsDir       string    `hcl:"certs_dir,optional"`
	Restart        string    `hcl:"restart,optional"`
	RestartCommand []string  `hcl:"restart_command,optional"`
	Platform       string    `hcl:"platform,optional"`
	// For the cutover (steps/cutover.go): how ssh:// env files are reached,
	// and how a node's log is read when it does not come back.
	SSHKnownHosts string   `hcl:"ssh_known_hosts,optional"`
	SSHIdentity   string   `hcl:"ssh_identity,optional"`
	LogCommand    []string `hcl:"log_command,optional"`
	// With platform = "kubernetes" (steps/cutover_k8s.go): the resource
	// that owns MinIO's environment, "KIND/NAME" (tenant, objectstore or
	// statefulset), its namespace, and the API: a kubeconfig file and
	// context, or none for the in-cluster service account. gitops = true:
	// the resource's owner (Argo CD, Flux, helm) applies the change, the
	// cutover waits for it and then restarts.
	Resource   string `hcl:"resource,optional"`
	Namespace  string `hcl:"namespace,optional"`
	Kubeconfig string `hcl:"kubeconfig,optional"`
	Context    string `hcl:"context,optional"`
	GitOps     bool   `hcl:"gitops,optional"`
}

// aistorConnection reaches a MinIO/AIStor deployment.
type aistorConnection struct {
	cfg aistorConfig

	nodesOnce sync.Once
	nodes     []nodeSpec
	nodesBad  []string

	once  sync.Once
	admin *madmin.AdminClient
	s3    *minio.Client
	err   error
}

func (a *aistorConnection) Config() any { return &a.cfg }

func (a *aistorConnection) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if !d.Unknown("endpoint") {
		if u, err := url.Parse(a.cfg.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid endpoint", Detail: "endpoint is the object store's URL, for example \"https://minio.example.net:9000\".", Subject: d.AttrRange("endpoint")})
		}
	}
	diags = append(diags, urlCredentialDiags(d, "endpoint", "give them as access_key and secret_key, the secret key a sensitive variable.", a.cfg.Endpoint)...)
	diags = append(diags, urlCredentialDiags(d, "env_files", "reach the host with ssh_identity (a key file) or an ssh agent.", a.cfg.EnvFiles...)...)
	if a.cfg.Restart != "" {
		diags = append(diags, oneOf(d, "restart", a.cfg.Restart, "systemd", "command", "admin", "rolling")...)
	}
	if a.cfg.Restart == "command" && len(a.cfg.RestartCommand) == 0 && !a.everyNodeRestarts() {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing restart_command", Detail: "restart = \"command\" runs restart_command once per node: give it as an argv list, for example [\"/usr/local/bin/restart-minio\"].", Subject: d.AttrRange("restart")})
	}
	if a.cfg.Platform != "" {
		diags = append(diags, oneOf(d, "platform", a.cfg.Platform, "linux", "kubernetes")...)
	}
	if a.cfg.Platform == "kubernetes" {
		diags = append(diags, validateK8sConnection(d, &a.cfg)...)
	}
	if !d.Unknown("nodes") {
		_, problems := a.nodeSpecs()
		for _, p := range problems {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid nodes", Detail: p + ".", Subject: d.AttrRange("nodes")})
		}
	}
	if !d.Unknown("env_files") && !d.Unknown("nodes") {
		diags = append(diags, a.validateFiles(d)...)
	}
	return diags
}

// everyNodeRestarts reports whether every node has a restart_command of
// its own in nodes (then the block needs none).
func (a *aistorConnection) everyNodeRestarts() bool {
	specs, _ := a.nodeSpecs()
	if len(specs) == 0 || len(a.cfg.EnvFiles) > 0 {
		return false
	}
	for _, sp := range specs {
		if len(sp.RestartCommand) == 0 {
			return false
		}
	}
	return true
}

// validateFiles refuses local files that name no server where there is
// more than one file, and a file listed twice.
func (a *aistorConnection) validateFiles(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	all := a.EnvFiles()
	seen := map[string]bool{}
	for _, f := range all {
		if seen[f] {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate env file", Detail: fmt.Sprintf("%s is listed twice (env_files and nodes name every node's file once).", f), Subject: d.AttrRange("env_files")})
		}
		seen[f] = true
	}
	if len(all) < 2 {
		return diags
	}
	for _, f := range a.cfg.EnvFiles {
		if n, err := parseEnvNode(f); err == nil && !n.Remote() {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Local env file names no server", Detail: fmt.Sprintf("%s is a local file, and this object store has %d env files: a local file cannot be matched to its server by host. Name the server each local file controls, as `mc admin info` lists it: nodes = { \"HOST:PORT\" = { env_file = %q } } (one entry per server; leave env_files for ssh://user@host/path files, which match by host).", f, len(all), f), Subject: d.AttrRange("env_files")})
		}
	}
	return diags
}

// Endpoint is the deployment's URL.
func (a *aistorConnection) Endpoint() string { return a.cfg.Endpoint }

// EnvFiles are the nodes' environment files as written in the runbook:
// env_files, then the files of nodes in the order of their servers.
func (a *aistorConnection) EnvFiles() []string {
	files := append([]string(nil), a.cfg.EnvFiles...)
	specs, _ := a.nodeSpecs()
	for _, n := range specs {
		files = append(files, n.EnvFile)
	}
	return files
}

// nodeSpecs are the entries of nodes, sorted by server, and what is wrong
// with them (Validate reports it).
func (a *aistorConnection) nodeSpecs() ([]nodeSpec, []string) {
	a.nodesOnce.Do(func() { a.nodes, a.nodesBad = parseNodeSpecs(a.cfg.Nodes) })
	return a.nodes, a.nodesBad
}

// CertsDir is the certs dir every node's MinIO loads, when the runbook
// says it ("" = found per node: aistor_nodes.go).
func (a *aistorConnection) CertsDir() string { return a.cfg.CertsDir }

// RestartMode is how the cutover restarts each node.
func (a *aistorConnection) RestartMode() string { return a.cfg.Restart }

// RestartCommand is the argv run once per node with restart = "command".
func (a *aistorConnection) RestartCommand() []string { return a.cfg.RestartCommand }

// Platform is "" (files on hosts) or "kubernetes".
func (a *aistorConnection) Platform() string { return a.cfg.Platform }

// SSHKnownHosts is the known_hosts file that ssh:// env files' hosts are
// checked against ("" = ~/.ssh/known_hosts).
func (a *aistorConnection) SSHKnownHosts() string { return a.cfg.SSHKnownHosts }

// SSHIdentity is the private key file for ssh:// env files ("" = an ssh
// agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa).
func (a *aistorConnection) SSHIdentity() string { return a.cfg.SSHIdentity }

// LogCommand is an argv that prints a node's recent log (run once per node
// with RUNBOOK_NODE set, on the node's host for ssh:// env files).
func (a *aistorConnection) LogCommand() []string { return a.cfg.LogCommand }

// Clients returns the admin and S3 clients, built once.
func (a *aistorConnection) Clients(r *engine.Run) (*madmin.AdminClient, *minio.Client, error) {
	a.once.Do(func() { a.admin, a.s3, a.err = a.newClients(r) })
	return a.admin, a.s3, a.err
}

func (a *aistorConnection) newClients(r *engine.Run) (*madmin.AdminClient, *minio.Client, error) {
	r.AddSecret(a.cfg.SecretKey)
	u, err := url.Parse(a.cfg.Endpoint)
	if err != nil {
		return nil, nil, fmt.Errorf("parse endpoint: %w", err)
	}
	secure := u.Scheme == "https"
	tlsCfg, _, err := tlsConfigFor(r, a.cfg.CAFile, a.cfg.Insecure, u.Hostname())
	if err != nil {
		return nil, nil, err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsCfg
	admin, err := madmin.NewWithOptions(u.Host, &madmin.Options{Creds: credentials.NewStaticV4(a.cfg.AccessKey, a.cfg.SecretKey, ""), Secure: secure, Transport: transport})
	if err != nil {
		return nil, nil, fmt.Errorf("make admin client: %w", err)
	}
	s3, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4(a.cfg.AccessKey, a.cfg.SecretKey, ""), Secure: secure, Transport: transport})
	if err != nil {
		return nil, nil, fmt.Errorf("make S3 client: %w", err)
	}
	return admin, s3, nil
}

// hostOf is the host:port of a URL, for messages.
func hostOf(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		return u.Host
	}
	return strings.TrimPrefix(endpoint, "https://")
}
