package steps

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/minio/madmin-go/v3"

	"github.com/runbook-dev/runbook/engine"
)

// nodeFile is one node's file as read.
type nodeFile struct {
	node *envNode
	data []byte
	meta fileMeta
	sum  string
}

func (c *cutoverStep) readAll(ctx context.Context, r *engine.Run, e *cutoverEnv) ([]nodeFile, error) {
	files := make([]nodeFile, len(e.nodes))
	errs := make([]error, len(e.nodes))
	var wg sync.WaitGroup
	for i, n := range e.nodes {
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

func (c *cutoverStep) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	e, err := c.resolve(r)
	if err != nil {
		return nil, err
	}
	defer e.pool.close()
	p := &engine.StepPlan{ItemsLabel: "env files to edit"}
	if e.a.Platform() == "kubernetes" {
		return c.planKubernetes(ctx, r, e, p)
	}
	switch e.a.RestartMode() {
	case "admin":
		return nil, refuseAdmin()
	case "":
		return nil, errors.New("the aistor block sets no restart mode: set restart = \"systemd\" or \"command\"")
	}
	files, err := c.readAll(ctx, r, e)
	if err != nil {
		return nil, err
	}
	if err := sameFiles(files); err != nil {
		return nil, engine.Refusef("%v", err)
	}
	apiKey := c.cfg.APIKey
	if apiKey == "" || r.Decoded.Unknown("api_key") {
		apiKey = "(known after apply)"
	}
	set, err := c.desired(e, files[0].data, apiKey)
	if err != nil {
		return nil, fmt.Errorf("plan env file %s: %w", files[0].node.Name, err)
	}
	state := map[string]string{}
	for _, f := range files {
		state[f.node.Name] = f.sum
		newData, err := editEnv(f.data, set)
		if err != nil {
			return nil, fmt.Errorf("plan edit of %s: %w", f.node.Name, err)
		}
		p.Observed = append(p.Observed, fmt.Sprintf("%s: sha256 %s", f.node.Name, f.sum))
		p.Items = append(p.Items, f.node.Name)
		diff := envDiff(f.data, newData)
		p.Actions = append(p.Actions, fmt.Sprintf("back up %s into the journal dir (0600) and change it:", f.node.Name))
		for _, l := range diff {
			p.Actions = append(p.Actions, "    "+r.Redact(l))
		}
		p.Sections = append(p.Sections, engine.PlanSection{Title: "Environment diff: " + f.node.Name, Body: r.Redact(strings.Join(diff, "\n"))})
	}
	p.Observed = append(p.Observed, fmt.Sprintf("the %d env files are identical (sha256 %s)", len(files), files[0].sum))
	if admin, _, err := e.a.Clients(r); err == nil {
		if st, err := admin.KMSStatus(ctx); err == nil {
			p.Observed = append(p.Observed, fmt.Sprintf("AIStor reports KMS %q, default key %q, endpoints %s", st.Name, st.DefaultKeyID, formatKMSEndpoints(st.Endpoints)))
			if st.Name == kmsNameKeyManager {
				p.Risks = append(p.Risks, "AIStor already reports the Key Manager: the files will be edited and the nodes restarted all the same")
			}
		} else {
			p.Risks = append(p.Risks, fmt.Sprintf("could not read AIStor's KMS status: %v", err))
		}
	}
	p.Actions = append(p.Actions, fmt.Sprintf("confirm the %d edited files are identical (sha256) before any restart", len(files)))
	p.Actions = append(p.Actions, c.restartAction(e))
	p.Actions = append(p.Actions, fmt.Sprintf("wait up to %s until every node is online, AIStor's KMS status names the Key Manager (%s) with its endpoints online, and the default key %q passes a key status check", e.wait, kmsNameKeyManager, set["MINIO_KMS_SSE_KEY"]))
	p.Actions = append(p.Actions, c.validateAction(e))
	if e.onFail == "rollback" {
		p.Actions = append(p.Actions, "on failure: restore the original files, restart and confirm objects read through KES again (on_failure = \"rollback\")")
	} else {
		p.Actions = append(p.Actions, "on failure: stop and leave the nodes as they are (on_failure = \"stop\"); runbook rollback restores them")
	}
	p.Verification = []string{
		fmt.Sprintf("every node online and AIStor's KMS status names %q with every endpoint online", kmsNameKeyManager),
		fmt.Sprintf("the default key %q passes AIStor's key status check (generate + decrypt)", set["MINIO_KMS_SSE_KEY"]),
		c.validateAction(e),
	}
	p.Rollback = "restore every node's backed-up env file, restart the nodes the same way, and confirm AIStor reports KES and objects read again; refused once any object was written or changed after the cutover's restart (KES cannot read what the Key Manager sealed) unless forced"
	if e.a.RestartMode() == "systemd" {
		p.Risks = append(p.Risks, "restart = \"systemd\": a full stop and start of the minio unit on every node; variables set elsewhere in the unit (Environment=) are not seen by this plan")
	}
	p.Risks = append(p.Risks, "the nodes restart together (MinIO requires the same environment on every node): the object store is unavailable until they are back")
	sort.Strings(p.Items)
	p.State = map[string]any{"env_files": state}
	return p, nil
}

func (c *cutoverStep) restartAction(e *cutoverEnv) string {
	switch e.a.RestartMode() {
	case "systemd":
		return fmt.Sprintf("restart every node at once: systemctl restart %s on each node's host", systemdUnit)
	default:
		return fmt.Sprintf("restart every node at once: run %s once per node (RUNBOOK_NODE = the node's env file)", quoteArgvList(e.a.RestartCommand()))
	}
}

func (c *cutoverStep) validateAction(e *cutoverEnv) string {
	what := fmt.Sprintf("%d object(s) of every bucket", e.sample)
	if c.cfg.ValidateAll {
		what = "every object of every bucket"
	}
	if len(c.cfg.ValidateObjects) > 0 {
		what = strings.Join(c.cfg.ValidateObjects, ", ") + " and " + what
	}
	return "read back (every byte: a HEAD proves nothing for SSE) " + what + ", and check every bucket's encryption configuration still resolves at the KMS"
}

func formatKMSEndpoints(m map[string]madmin.ItemState) string {
	if len(m) == 0 {
		return "(none)"
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, k+" "+string(v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
