package steps

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

// linuxPlatform is the cutover on hosts: every node's environment is an
// env file (local, or ssh://user@host[:port]/path), edited in place, and
// every node is restarted by systemd or by a restart command. Its nodes
// are the object store's servers, each matched to the env file that
// controls it (aistor_nodes.go) and checked from the node before any
// change (cutover_linux_nodes.go).
type linuxPlatform struct {
	a      *aistorConnection
	target kmTarget
	nodes  []*envNode  // every node's env file, in the runbook's order
	specs  []nodeSpec  // per node: its nodes entry (Server "" for an env_files entry)
	facts  []nodeFacts // per node, found by Observe
	pool   *sshPool
	files  []nodeFile // as Observe read them

	observed bool // Observe ran (facts are known)
}

var _ cutoverPlatform = (*linuxPlatform)(nil)

func newLinuxPlatform(a *aistorConnection, target kmTarget) (*linuxPlatform, error) {
	l := &linuxPlatform{a: a, target: target, pool: newSSHPool(a.SSHKnownHosts(), a.SSHIdentity())}
	specs, _ := a.nodeSpecs()
	for _, f := range a.cfg.EnvFiles {
		l.specs = append(l.specs, nodeSpec{EnvFile: f})
	}
	l.specs = append(l.specs, specs...)
	for _, sp := range l.specs {
		n, err := parseEnvNode(sp.EnvFile)
		if err != nil {
			return nil, err
		}
		n.pool = l.pool
		l.nodes = append(l.nodes, n)
	}
	l.facts = make([]nodeFacts, len(l.nodes))
	return l, nil
}

func (l *linuxPlatform) Close()       { l.pool.close() }
func (l *linuxPlatform) Servers() int { return len(l.nodes) }

// Hosts counts the hosts the runbook names: each nodes entry's host, each
// ssh host, and this host for a lone local file.
func (l *linuxPlatform) Hosts() int {
	hosts := map[string]bool{}
	for i, sp := range l.specs {
		switch {
		case sp.Server != "":
			h, _, _ := net.SplitHostPort(sp.Server)
			hosts[strings.ToLower(h)] = true
		case l.nodes[i].Remote():
			h, _, _ := net.SplitHostPort(l.nodes[i].Host)
			hosts[strings.ToLower(h)] = true
		default:
			hosts[""] = true
		}
	}
	return len(hosts)
}

// nodeFile is one node's file as read.
type nodeFile struct {
	node *envNode
	data []byte
	meta fileMeta
	sum  string
}

func (l *linuxPlatform) readAll(ctx context.Context, r *engine.Run) ([]nodeFile, error) {
	files := make([]nodeFile, len(l.nodes))
	errs := make([]error, len(l.nodes))
	var wg sync.WaitGroup
	for i, n := range l.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data, meta, err := n.read(ctx, r)
			files[i], errs[i] = nodeFile{node: n, data: data, meta: meta, sum: envSHA256(data)}, err
		}()
	}
	wg.Wait()
	return files, errors.Join(errs...)
}

// sameFiles names the nodes whose file differs from the majority's.
func sameFiles(files []nodeFile) error {
	count := map[string]int{}
	for _, f := range files {
		count[f.sum]++
	}
	if len(count) <= 1 {
		return nil
	}
	best := ""
	for _, f := range files { // the most common content; ties go to the first node's
		if best == "" || count[f.sum] > count[best] {
			best = f.sum
		}
	}
	var odd []string
	for _, f := range files {
		if f.sum != best {
			odd = append(odd, fmt.Sprintf("%s (sha256 %s)", f.node.Name, f.sum))
		}
	}
	return fmt.Errorf("the nodes' env files are not identical: %s differs from the other nodes' (sha256 %s); MinIO requires the same MINIO_* environment on every node: make the files identical (shasum -a 256 on each node) and run again", strings.Join(odd, ", "), best)
}

// Observe refuses a restart mode that cannot cut over, env files that
// differ between nodes, servers no file covers and files that match no
// server, a node that cannot run on the Key Manager (nodeChecks), and
// (restart = "systemd") KMS variables the unit sets outside the edited
// file.
func (l *linuxPlatform) Observe(ctx context.Context, r *engine.Run) (*platformView, error) {
	if err := refuseRestartMode(l.a); err != nil {
		return nil, err
	}
	files, err := l.readAll(ctx, r)
	if err != nil {
		return nil, err
	}
	if err := sameFiles(files); err != nil {
		return nil, engine.Refusef("%v", err)
	}
	l.files = files
	env, err := envEffective(files[0].data)
	if err != nil {
		return nil, fmt.Errorf("read env file %s: %w", files[0].node.Name, err)
	}
	if err := l.matchServers(ctx, r); err != nil {
		return nil, err
	}
	v := &platformView{Env: env}
	if v.Risks, err = l.nodeChecks(ctx, r, env); err != nil {
		return nil, err
	}
	for i, f := range files {
		v.Observed = append(v.Observed, fmt.Sprintf("%s: sha256 %s; %s", f.node.Name, f.sum, l.facts[i].summary()))
	}
	v.Observed = append(v.Observed, fmt.Sprintf("the %d env files are identical (sha256 %s)", len(files), files[0].sum))
	if l.a.RestartMode() == "systemd" {
		lines, err := l.checkUnitEnv(ctx, r)
		if err != nil {
			return nil, err
		}
		v.Observed = append(v.Observed, lines...)
	}
	l.observed = true
	v.Table = l.nodeTable()
	return v, nil
}

func (l *linuxPlatform) PlanChange(r *engine.Run, set map[string]string, p *engine.StepPlan) (map[string]any, error) {
	p.ItemsLabel = "env files to edit"
	state := map[string]string{}
	for _, f := range l.files {
		state[f.node.Name] = f.sum
		newData, err := editEnv(f.data, set)
		if err != nil {
			return nil, fmt.Errorf("plan edit of %s: %w", f.node.Name, err)
		}
		p.Items = append(p.Items, f.node.Name)
		diff := envDiff(f.data, newData)
		p.Actions = append(p.Actions, fmt.Sprintf("back up %s into the journal dir (0600) and change it:", f.node.Name))
		for _, l := range diff {
			p.Actions = append(p.Actions, "    "+r.Redact(l))
		}
		p.Sections = append(p.Sections, engine.PlanSection{Title: "Environment diff: " + f.node.Name, Body: r.Redact(strings.Join(diff, "\n"))})
	}
	sort.Strings(p.Items)
	if a := l.caAction(); a != "" {
		p.Actions = append(p.Actions, a)
	}
	p.Actions = append(p.Actions, fmt.Sprintf("confirm the %d edited files are identical (sha256) before any restart", len(l.files)))
	p.Sections = append(p.Sections, engine.PlanSection{Title: "Nodes", Body: l.nodeTable().Text()})
	p.Actions = append(p.Actions, l.restartAction())
	p.Actions = append(p.Actions, fmt.Sprintf("once healthy, write a probe object through each server's own endpoint into a bucket runbook-write-probe-… that the cutover makes and removes again (the rollback's write check ignores it); a server that still refuses writes %s after another accepted is restarted alone", loneRestartAfter))
	p.Rollback = "restore every node's backed-up env file, restart the nodes the same way, and confirm AIStor reports KES and objects read again; refused once any object was written or changed after the cutover's restart (KES cannot read what the Key Manager sealed) unless forced"
	if l.a.RestartMode() == "systemd" {
		p.Risks = append(p.Risks, "restart = \"systemd\": a full stop and start of the minio unit on every node")
	}
	p.Risks = append(p.Risks, "the nodes restart together (MinIO requires the same environment on every node at start-up, cmd/bootstrap-peer-server.go): the object store answers nothing until they are back; S3 clients with minio-go's default retries ride out about 4 to 8 seconds. Even once every node answers healthy, a node that started before a peer's drive was ready refuses writes until MinIO's next drive check, up to about 16 s later (cmd/erasure-sets.go monitorAndConnectEndpoints: 15 s; seen in 1 to 3 of every 10 restarts measured, BENCHMARKS.md): the apply restarts such a node alone once another accepts writes (its environment then equals its peers', so MinIO's start-up check passes). It measures the window from the first failed probe until every server accepted a write, and reports it in its log and as the output unavailable_seconds")
	servers := map[string]string{}
	for i, n := range l.nodes {
		servers[n.Name] = l.facts[i].server.Endpoint
	}
	return map[string]any{"env_files": state, "servers": servers}, nil
}

func (l *linuxPlatform) restartAction() string {
	switch l.a.RestartMode() {
	case "systemd":
		return fmt.Sprintf("restart every node at once: systemctl restart %s on each node's host", systemdUnit)
	default:
		var own []string
		for i, sp := range l.specs {
			if len(sp.RestartCommand) > 0 {
				own = append(own, fmt.Sprintf("%s runs %s", l.nodes[i].Name, quoteArgvList(sp.RestartCommand)))
			}
		}
		if len(own) == len(l.specs) {
			return "restart every node at once: " + strings.Join(own, ", ")
		}
		s := fmt.Sprintf("restart every node at once: run %s once per node (RUNBOOK_NODE = the node's env file)", quoteArgvList(l.a.RestartCommand()))
		if len(own) > 0 {
			s += "; " + strings.Join(own, ", ") + " instead"
		}
		return s
	}
}

// Write installs the Key Manager's CA where a node lacks it (install_ca),
// backs up and edits every node's file (checkpointed per node, so a resume
// never edits a file twice) and confirms the edited files are identical.
func (l *linuxPlatform) Write(ctx context.Context, r *engine.Run, g int, set map[string]string) error {
	if err := l.installCAs(ctx, r, g); err != nil {
		return err
	}
	files, err := l.readAll(ctx, r)
	if err != nil {
		return err
	}
	for i, f := range files {
		if err := writeNode(ctx, r, g, i, f, set); err != nil {
			return err
		}
	}
	return l.confirmWritten(ctx, r, g)
}

// writeNode backs up one node's file and records the intent (the hash the
// file is about to get), then edits it and records that: on a resume, a
// file with the intended hash is edited already, one with the original's
// is edited from the backup, and any other was changed by someone else.
func writeNode(ctx context.Context, r *engine.Run, g, i int, f nodeFile, set map[string]string) error {
	bitem, eitem := nodeBackups(g).Item(f.node.Name), nodesEdited(g).Item(f.node.Name)
	// A backup record that does not decode is an error: read as absent,
	// the file (maybe edited already) would be backed up as the original.
	b, hasBackup, err := bitem.Get(r)
	if err != nil {
		return err
	}
	if !hasBackup {
		if b, err = backUpNode(r, g, i, f, set); err != nil {
			return err
		}
		// The intent, before the edit: a resume recognises the edited file by this hash.
		if err := bitem.Put(r, b); err != nil {
			return err
		}
		r.Logf("backed up %s (sha256 %s)", f.node.Name, f.sum)
	}
	switch f.sum {
	case b.New:
		if !eitem.Done(r) {
			r.Logf("%s is already edited (sha256 %s)", f.node.Name, b.New)
		}
	case b.Original:
		if err := editFromBackup(ctx, r, f.node, b, set); err != nil {
			return err
		}
	default:
		return fmt.Errorf("env file %s changed since the cutover backed it up (sha256 %s, expected the original %s or the edited %s): someone else is editing it; compare it with the backup in %s and roll back or fix it by hand", f.node.Name, f.sum, b.Original, b.New, r.JournalDir())
	}
	if eitem.Done(r) {
		return nil
	}
	return eitem.Put(r, fileSum{SHA256: b.New})
}

// backUpNode writes node i's file to the journal's backups/ (attempt g
// keeps its own copy) and returns the backup record, with the hash of the
// edited content it is about to get.
func backUpNode(r *engine.Run, g, i int, f nodeFile, set map[string]string) (cutoverBackup, error) {
	newData, err := editEnv(f.data, set)
	if err != nil {
		return cutoverBackup{}, fmt.Errorf("edit env file %s: %w", f.node.Name, err)
	}
	name := backupName(i, f.node)
	if g > 0 {
		name = fmt.Sprintf("%s.g%d", name, g)
	}
	bp, err := r.BackupPath(name)
	if err != nil {
		return cutoverBackup{}, err
	}
	if err := engine.WriteFileAtomic(bp, f.data, 0o600); err != nil {
		return cutoverBackup{}, fmt.Errorf("back up env file %s: %w", f.node.Name, err)
	}
	return cutoverBackup{Backup: name, Original: f.sum, New: envSHA256(newData), Mode: f.meta.Mode, UID: f.meta.UID, GID: f.meta.GID}, nil
}

// editFromBackup writes the node's edited file, made again from its backup:
// it must hash as recorded before any interruption.
func editFromBackup(ctx context.Context, r *engine.Run, n *envNode, b cutoverBackup, set map[string]string) error {
	orig, err := readBackup(r, b)
	if err != nil {
		return err
	}
	newData, err := editEnv(orig, set)
	if err != nil {
		return fmt.Errorf("edit env file %s: %w", n.Name, err)
	}
	if envSHA256(newData) != b.New {
		return fmt.Errorf("edit env file %s: the new content differs from the one recorded before the interruption (was the API key, the enclave or the Key Manager changed?); roll back and plan again", n.Name)
	}
	if err := n.write(ctx, r, newData, fileMeta{Mode: b.Mode, UID: b.UID, GID: b.GID}); err != nil {
		return err
	}
	r.Logf("edited %s (sha256 %s → %s)", n.Name, b.Original, b.New)
	return nil
}

// confirmWritten reads every node's file again: each is the edited one, and
// all are identical, before any restart.
func (l *linuxPlatform) confirmWritten(ctx context.Context, r *engine.Run, g int) error {
	files, err := l.readAll(ctx, r)
	if err != nil {
		return err
	}
	for _, f := range files {
		b, _, err := nodeBackups(g).Item(f.node.Name).Get(r)
		if err != nil {
			return err
		}
		if f.sum != b.New {
			return fmt.Errorf("env file %s is not the edited one after writing it (sha256 %s, expected %s); no node was restarted", f.node.Name, f.sum, b.New)
		}
	}
	if err := sameFiles(files); err != nil {
		return fmt.Errorf("check edited env files: %w; no node was restarted", err)
	}
	r.Logf("the %d edited env files are identical (sha256 %s)", len(files), files[0].sum)
	return nil
}

func readBackup(r *engine.Run, b cutoverBackup) ([]byte, error) {
	bp, err := r.BackupPath(b.Backup)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(bp)
	if err != nil {
		return nil, fmt.Errorf("read backup %s: %w", bp, err)
	}
	if envSHA256(data) != b.Original {
		return nil, fmt.Errorf("backup %s is damaged (sha256 %s, recorded %s)", bp, envSHA256(data), b.Original)
	}
	return data, nil
}

// Restore puts back attempt g's backups. Every file must be the original
// or the edited one before any is touched.
func (l *linuxPlatform) Restore(ctx context.Context, r *engine.Run, g int) error {
	type todo struct {
		n    *envNode
		b    cutoverBackup
		data []byte
	}
	var work []todo
	for _, n := range l.nodes {
		// A backup record that does not decode is an error: read as
		// absent, the node would be left unrestored.
		b, ok, err := nodeBackups(g).Item(n.Name).Get(r)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		data, _, err := n.read(ctx, r)
		if err != nil {
			return err
		}
		switch envSHA256(data) {
		case b.Original:
			if !nodesRestored(g).Item(n.Name).Done(r) {
				r.Logf("%s already has its original content", n.Name)
				work = append(work, todo{n: n, b: b}) // checkpoint only
			}
		case b.New:
			orig, err := readBackup(r, b)
			if err != nil {
				return err
			}
			work = append(work, todo{n, b, orig})
		default:
			return engine.Refusef("env file %s changed after the cutover edited it (sha256 %s; the cutover wrote %s): restoring the backup would discard that change; compare it with the backup %s in the journal dir's backups/ and restore it by hand", n.Name, envSHA256(data), b.New, b.Backup)
		}
	}
	for _, w := range work {
		if w.data != nil {
			if err := w.n.write(ctx, r, w.data, fileMeta{Mode: w.b.Mode, UID: w.b.UID, GID: w.b.GID}); err != nil {
				return err
			}
			r.Logf("restored %s (sha256 %s)", w.n.Name, w.b.Original)
		}
		if err := nodesRestored(g).Item(w.n.Name).Put(r, fileSum{SHA256: w.b.Original}); err != nil {
			return err
		}
	}
	return l.removeCAs(ctx, r, g)
}

// Restart restarts every node at once: MinIO requires the same MINIO_*
// environment on every node of a deployment, so a rolling restart cannot
// pass its start-up check.
func (l *linuxPlatform) Restart(ctx context.Context, r *engine.Run, _ bool) error {
	errs := make([]error, len(l.nodes))
	var wg sync.WaitGroup
	r.Logf("%s", l.restartAction())
	for i, n := range l.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := l.restartNode(ctx, r, i, n, false)
			if err != nil {
				errs[i] = fmt.Errorf("restart %s: %w; last lines of its output:\n%s", n.Name, err, lastLines(out, logTailLines))
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// RestartServer restarts alone the node that serves server (host:port as
// the object store lists it), as Restart restarts each node, and returns
// its env file's name (the write probe, cutover_probe.go). A resume has not
// run Observe: the servers are matched to the files again.
func (l *linuxPlatform) RestartServer(ctx context.Context, r *engine.Run, server string) (string, error) {
	find := func() int {
		for i := range l.nodes {
			if l.facts[i].server.Endpoint == server {
				return i
			}
		}
		return -1
	}
	i := find()
	if i < 0 {
		if err := l.matchServers(ctx, r); err != nil {
			return "", fmt.Errorf("restart server %s alone: %w", server, err)
		}
		if i = find(); i < 0 {
			return "", fmt.Errorf("restart server %s alone: no env file of the runbook controls it", server)
		}
	}
	n := l.nodes[i]
	out, err := l.restartNode(ctx, r, i, n, true)
	if err != nil {
		return n.Name, fmt.Errorf("restart server %s (%s) alone: %w; last lines of its output:\n%s", server, n.Name, err, lastLines(out, logTailLines))
	}
	r.Logf("restarted server %s (%s) alone", server, n.Name)
	return n.Name, nil
}

// restartNode restarts node i: with every other node at once, or alone
// (the restart command learns which from RUNBOOK_RESTART, "every" or
// "alone").
func (l *linuxPlatform) restartNode(ctx context.Context, r *engine.Run, i int, n *envNode, alone bool) (string, error) {
	var (
		out []byte
		err error
	)
	switch l.a.RestartMode() {
	case "systemd":
		out, err = n.exec(ctx, r, []string{"systemctl", "restart", systemdUnit}, nil)
	case "command":
		env := l.nodeEnv(i)
		env["RUNBOOK_RESTART"] = "every"
		if alone {
			env["RUNBOOK_RESTART"] = "alone"
		}
		out, err = (&envNode{Name: n.Name}).exec(ctx, r, l.restartCommand(i), env)
	default:
		return "", fmt.Errorf("restart mode %q", l.a.RestartMode())
	}
	text := r.Redact(string(out))
	if lp, lerr := r.LogPath(fmt.Sprintf("restart.node%d", i+1)); lerr == nil {
		_ = os.WriteFile(lp, []byte(text), 0o600)
	}
	for _, line := range splitLines(strings.TrimRight(text, "\n")) {
		r.Logf("%s: %s", n.Name, line)
	}
	return text, err
}

// restartCommand is node i's restart_command: its own in nodes, else the
// aistor block's.
func (l *linuxPlatform) restartCommand(i int) []string {
	if rc := l.specs[i].RestartCommand; len(rc) > 0 {
		return rc
	}
	return l.a.RestartCommand()
}

// nodeEnv is what a restart or log command learns of node i: its env file
// (RUNBOOK_NODE, as written in the runbook; RUNBOOK_ENV_FILE, its path),
// its number, its ssh host and user, and its server when the runbook
// names it in nodes (RUNBOOK_NODE_SERVER).
func (l *linuxPlatform) nodeEnv(i int) map[string]string {
	n := l.nodes[i]
	env := map[string]string{"RUNBOOK_NODE": n.Name, "RUNBOOK_NODE_INDEX": fmt.Sprint(i + 1), "RUNBOOK_ENV_FILE": n.Path}
	if n.Remote() {
		env["RUNBOOK_NODE_HOST"] = n.Host
		env["RUNBOOK_NODE_USER"] = n.User
	}
	if s := l.specs[i].Server; s != "" {
		env["RUNBOOK_NODE_SERVER"] = s
	}
	return env
}

// Logs collects every node's recent log: the aistor block's log_command,
// or journalctl for systemd, or the restart command's output kept in logs/.
func (l *linuxPlatform) Logs(ctx context.Context, r *engine.Run) string {
	var b strings.Builder
	for i, n := range l.nodes {
		var (
			out []byte
			err error
		)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		switch {
		case len(l.a.LogCommand()) > 0 && n.Remote():
			out, err = n.exec(lctx, r, l.a.LogCommand(), l.nodeEnv(i))
		case len(l.a.LogCommand()) > 0:
			out, err = (&envNode{Name: n.Name}).exec(lctx, r, l.a.LogCommand(), l.nodeEnv(i))
		case l.a.RestartMode() == "systemd":
			out, err = n.exec(lctx, r, []string{"journalctl", "-u", systemdUnit, "-n", fmt.Sprint(logTailLines), "--no-pager"}, nil)
		default:
			lp, _ := r.LogPath(fmt.Sprintf("restart.node%d", i+1))
			out, _ = os.ReadFile(lp)
		}
		cancel()
		text := string(out)
		if err != nil {
			text += fmt.Sprintf("\n(reading the log failed: %v)", err)
		}
		fmt.Fprintf(&b, "\n  %s, last lines of its log:\n%s", n.Name, lastLines(r.Redact(text), logTailLines))
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := splitLines(strings.TrimRight(s, "\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return "\t(no output)"
	}
	return "\t" + strings.Join(lines, "\n\t")
}
