package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

// Checkpoint data. None holds a secret: hashes, modes, times, names.
type cutoverBackup struct {
	Backup   string      `json:"backup"` // file name in the step's backups/
	Original string      `json:"original_sha256"`
	New      string      `json:"new_sha256"`
	Mode     os.FileMode `json:"mode"`
	UID      int         `json:"uid"`
	GID      int         `json:"gid"`
}

type cutoverRestart struct {
	At   time.Time `json:"at"`
	Mode string    `json:"mode"`
}

// cutoverGen is the number of earlier attempts of this step that were rolled
// back automatically.
func cutoverGen(r *engine.Run) int {
	n := 0
	for _, it := range r.CheckpointOrder() {
		if strings.HasPrefix(it, "rolled-back/") {
			n++
		}
	}
	return n
}

func cutoverItem(g int, name string) string {
	if g == 0 {
		return name
	}
	return fmt.Sprintf("g%d/%s", g, name)
}

func cutoverCheckpoint[T any](r *engine.Run, name string) (T, bool) {
	var v T
	raw, ok := r.Checkpoints()[name]
	if !ok {
		return v, false
	}
	return v, json.Unmarshal(raw, &v) == nil
}

// backupName is node N's backup file (N in env_files order, which the
// journal's copy of the runbook fixes).
func backupName(i int, _ *envNode) string {
	return fmt.Sprintf("node%d.env", i+1)
}

func (c *cutoverStep) Apply(ctx context.Context, r *engine.Run) error {
	e, err := c.resolve(r)
	if err != nil {
		return err
	}
	defer e.pool.close()
	if e.a.Platform() == "kubernetes" {
		return c.applyKubernetes(ctx, r, e)
	}
	switch e.a.RestartMode() {
	case "admin":
		return refuseAdmin()
	case "":
		return errors.New("the aistor block sets no restart mode: set restart = \"systemd\" or \"command\"")
	}
	g := cutoverGen(r)
	if g > 0 {
		r.Logf("attempt %d: the previous attempt was rolled back; starting over", g+1)
	}
	files, err := c.readAll(ctx, r, e)
	if err != nil {
		return err
	}
	started := false
	for _, f := range files {
		if r.HasCheckpoint(cutoverItem(g, "backup/"+f.node.Name)) {
			started = true
		}
	}
	if !started {
		// Before touching anything: the nodes must agree.
		if err := sameFiles(files); err != nil {
			return fmt.Errorf("check env files before the cutover: %w (nothing was changed, no node restarted)", err)
		}
	}
	var set map[string]string
	for i, f := range files {
		bitem, eitem := cutoverItem(g, "backup/"+f.node.Name), cutoverItem(g, "edited/"+f.node.Name)
		b, hasBackup := cutoverCheckpoint[cutoverBackup](r, bitem)
		if !hasBackup {
			if set == nil {
				if set, err = c.desired(e, f.data, c.cfg.APIKey); err != nil {
					return fmt.Errorf("edit env file %s: %w", f.node.Name, err)
				}
			}
			newData, err := editEnv(f.data, set)
			if err != nil {
				return fmt.Errorf("edit env file %s: %w", f.node.Name, err)
			}
			name := backupName(i, f.node)
			if g > 0 {
				name = fmt.Sprintf("%s.g%d", name, g)
			}
			bp, err := r.BackupPath(name)
			if err != nil {
				return err
			}
			if err := engine.WriteFileAtomic(bp, f.data, 0o600); err != nil {
				return fmt.Errorf("back up env file %s: %w", f.node.Name, err)
			}
			b = cutoverBackup{Backup: name, Original: f.sum, New: envSHA256(newData), Mode: f.meta.Mode, UID: f.meta.UID, GID: f.meta.GID}
			// The intent, before the edit: a resume recognises the edited file by this hash.
			if err := r.Checkpoint(bitem, b); err != nil {
				return err
			}
			r.Logf("backed up %s (sha256 %s)", f.node.Name, f.sum)
		}
		switch f.sum {
		case b.New:
			if !r.HasCheckpoint(eitem) {
				r.Logf("%s is already edited (sha256 %s)", f.node.Name, b.New)
			}
		case b.Original:
			orig, err := c.readBackup(r, b)
			if err != nil {
				return err
			}
			if set == nil {
				if set, err = c.desired(e, orig, c.cfg.APIKey); err != nil {
					return fmt.Errorf("edit env file %s: %w", f.node.Name, err)
				}
			}
			newData, err := editEnv(orig, set)
			if err != nil {
				return fmt.Errorf("edit env file %s: %w", f.node.Name, err)
			}
			if envSHA256(newData) != b.New {
				return fmt.Errorf("edit env file %s: the new content differs from the one recorded before the interruption (was the API key, the enclave or the Key Manager changed?); roll back and plan again", f.node.Name)
			}
			if err := f.node.write(ctx, r, newData, fileMeta{Mode: b.Mode, UID: b.UID, GID: b.GID}); err != nil {
				return err
			}
			r.Logf("edited %s (sha256 %s → %s)", f.node.Name, b.Original, b.New)
		default:
			return fmt.Errorf("env file %s changed since the cutover backed it up (sha256 %s, expected the original %s or the edited %s): someone else is editing it; compare it with the backup in %s and roll back or fix it by hand", f.node.Name, f.sum, b.Original, b.New, r.JournalDir())
		}
		if !r.HasCheckpoint(eitem) {
			if err := r.Checkpoint(eitem, map[string]string{"sha256": b.New}); err != nil {
				return err
			}
		}
	}

	// Every node's new file, identical, before any restart.
	files, err = c.readAll(ctx, r, e)
	if err != nil {
		return err
	}
	for _, f := range files {
		b, _ := cutoverCheckpoint[cutoverBackup](r, cutoverItem(g, "backup/"+f.node.Name))
		if f.sum != b.New {
			return fmt.Errorf("env file %s is not the edited one after writing it (sha256 %s, expected %s); no node was restarted", f.node.Name, f.sum, b.New)
		}
	}
	if err := sameFiles(files); err != nil {
		return fmt.Errorf("check edited env files: %w; no node was restarted", err)
	}
	r.Logf("the %d edited env files are identical (sha256 %s)", len(files), files[0].sum)

	rs, restarted := cutoverCheckpoint[cutoverRestart](r, cutoverItem(g, "restart"))
	if !restarted {
		rs = cutoverRestart{At: time.Now().UTC(), Mode: e.a.RestartMode()}
		if err := r.Checkpoint(cutoverItem(g, "restart"), rs); err != nil {
			return err
		}
	} else if !r.HasCheckpoint(cutoverItem(g, "restarted")) {
		r.Logf("the restart begun at %s was interrupted: restarting the nodes again", rs.At.Format(time.RFC3339))
	}
	r.SetOutput("restarted_at", cty.StringVal(rs.At.Format(time.RFC3339Nano)))
	failure := func(err error) error {
		if e.onFail != "rollback" {
			return fmt.Errorf("%w; on_failure = \"stop\": the nodes are left as they are; runbook rollback restores the original files", err)
		}
		r.Warnf("cutover failed: %v; rolling back (on_failure = \"rollback\")", err)
		if rbErr := c.rollback(ctx, r, e, g); rbErr != nil {
			return fmt.Errorf("%w; the automatic rollback failed too: %v", err, rbErr)
		}
		if err := r.Checkpoint(fmt.Sprintf("rolled-back/%d", g+1), map[string]string{"at": time.Now().UTC().Format(time.RFC3339)}); err != nil {
			return err
		}
		return fmt.Errorf("%w; rolled back automatically: every node has its original env file again and AIStor reads objects through KES", err)
	}
	if !r.HasCheckpoint(cutoverItem(g, "restarted")) {
		if err := c.restartAll(ctx, r, e); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return failure(err)
		}
		if err := r.Checkpoint(cutoverItem(g, "restarted"), map[string]int{"nodes": len(e.nodes)}); err != nil {
			return err
		}
	}
	if err := c.waitHealthy(ctx, r, e, kmsNameKeyManager); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return failure(err)
	}
	if err := r.Checkpoint(cutoverItem(g, "healthy"), map[string]string{"kms": kmsNameKeyManager}); err != nil {
		return err
	}
	n, err := c.validate(ctx, r, e)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return failure(err)
	}
	if err := r.Checkpoint(cutoverItem(g, "validated"), map[string]int{"objects": n}); err != nil {
		return err
	}
	r.SetOutput("kms", cty.StringVal(kmsNameKeyManager))
	r.Logf("AIStor reports %s; %d object(s) read back", kmsNameKeyManager, n)
	return nil
}

func (c *cutoverStep) readBackup(r *engine.Run, b cutoverBackup) ([]byte, error) {
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
