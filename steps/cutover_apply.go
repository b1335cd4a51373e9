package steps

import (
	"context"
	"fmt"
	"os"
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

// cutoverRestart is recorded before a restart begins. At is this host's
// clock; StoreAt is the object store's own (the Date header of its answer,
// whole seconds), which the write check before a rollback compares object
// and IAM times with.
type cutoverRestart struct {
	At      time.Time `json:"at"`
	StoreAt time.Time `json:"store_at,omitzero"`
	Mode    string    `json:"mode"`
	// IAM names the IAM users and groups before the restart ("user NAME",
	// "group NAME"; names only, no credential), so that the write check
	// before a rollback sees those added since: MinIO does not report when
	// a user without a policy was created.
	IAM []string `json:"iam,omitempty"`
	// Buckets digests each bucket's configuration before the restart
	// (bucket → SHA-256; bucketConfigDigest).
	Buckets map[string]string `json:"buckets,omitempty"`
}

// backupName is node N's backup file (N in env_files order, which the
// journal's copy of the runbook fixes).
func backupName(i int, _ *envNode) string {
	return fmt.Sprintf("node%d.env", i+1)
}

// Apply carries out the cutover: preflight (nothing changed yet), back up
// and edit every node's file, restart every node at once and confirm. On
// a failure it rolls back (on_failure = "rollback") or stops. It may be
// run again on the same journal (resume): what the checkpoints record as
// done is not done again, and a rollback that stopped part-way is
// finished first. Errors: refusals (engine.ErrRefused) before any change;
// otherwise the first failure, with what was undone.
func (c *cutoverStep) Apply(ctx context.Context, r *engine.Run) error {
	e, err := c.resolve(r)
	if err != nil {
		return err
	}
	defer e.pool.close()
	if e.a.Platform() == "kubernetes" {
		return c.applyKubernetes(ctx, r, e)
	}
	if err := refuseRestartMode(e); err != nil {
		return err
	}
	g := cutoverGen(r)
	if c.rollbackBegun(r, e, g) {
		// The automatic rollback of attempt g failed part-way: finish it
		// (without restarting again what it already restarted), then start
		// the next attempt.
		r.Logf("attempt %d was being rolled back when it stopped: finishing that rollback first", g+1)
		if err := c.rollback(ctx, r, e, g); err != nil {
			return fmt.Errorf("finish the rollback of attempt %d: %w", g+1, err)
		}
		if err := checkpointItem(r, rolledBackItem{Attempt: g + 1}, map[string]string{"at": time.Now().UTC().Format(time.RFC3339)}); err != nil {
			return err
		}
		g++
	}
	if g > 0 {
		r.Logf("attempt %d: the previous attempt was rolled back; starting over", g+1)
	}
	files, err := c.readAll(ctx, r, e)
	if err != nil {
		return err
	}
	started := false
	for _, f := range files {
		if hasItem(r, newNodeItem(g, nodeBackup, f.node.Name)) {
			started = true
		}
	}
	sample, err := c.preflight(ctx, r, e, files, !started)
	if err != nil {
		return err
	}
	if err := c.editAll(ctx, r, e, g, files); err != nil {
		return err
	}
	err = c.restartAndConfirm(ctx, r, e, g, false, sample)
	if err == nil {
		r.SetOutput("kms", cty.StringVal(kmsNameKeyManager))
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	if e.onFail != "rollback" {
		return fmt.Errorf("%w; on_failure = \"stop\": the nodes are left as they are; runbook rollback restores the original files, runbook resume tries again", err)
	}
	r.Warnf("cutover failed: %v; rolling back (on_failure = \"rollback\")", err)
	if rbErr := c.rollback(ctx, r, e, g); rbErr != nil {
		return fmt.Errorf("%w; the automatic rollback failed too: %v; the journal records how far it came: runbook rollback finishes it, runbook resume finishes it and tries the cutover again", err, rbErr)
	}
	if err := checkpointItem(r, rolledBackItem{Attempt: g + 1}, map[string]string{"at": time.Now().UTC().Format(time.RFC3339)}); err != nil {
		return err
	}
	return fmt.Errorf("%w; rolled back automatically: every node has its original env file again and AIStor reads the sample through KES", err)
}

// preflight runs before any change (first) or on a resume: the files must
// agree across nodes, the default key must be the one the object store
// runs with and be held by the enclave, and the object sample must read
// through KES today. The sample is checkpointed once and reused by every
// later attempt and by the rollback.
func (c *cutoverStep) preflight(ctx context.Context, r *engine.Run, e *cutoverEnv, files []nodeFile, first bool) (*cutoverSample, error) {
	defaultKey := ""
	if first {
		if err := sameFiles(files); err != nil {
			return nil, fmt.Errorf("check env files before the cutover: %w (nothing was changed, no node restarted)", err)
		}
		if e.a.RestartMode() == "systemd" {
			if _, err := c.checkUnitEnv(ctx, r, e); err != nil {
				return nil, err
			}
		}
		facts, err := c.observeKMS(ctx, r, e, files[0].data)
		if err != nil {
			return nil, err
		}
		if facts.sseKey != "" { // else the edit explains what is missing
			if err := c.checkEnclaveHolds(ctx, r, e, facts.sseKey); err != nil {
				return nil, err
			}
		}
		defaultKey = facts.sseKey
	}
	if s, ok := cutoverCheckpoint[cutoverSample](r, sampleItem{}); ok {
		return &s, nil
	}
	if !first {
		// An older journal without a sample: the files are already changed,
		// so what reads now proves nothing about KES; validate what is listed.
		r.Warnf("no object sample was recorded before the files were changed: validating a fresh sample")
	}
	s, err := c.chooseSample(ctx, r, e)
	if err != nil {
		return nil, err
	}
	if err := c.proveSample(ctx, r, e, s, defaultKey); err != nil {
		return nil, err
	}
	if err := checkpointItem(r, sampleItem{}, s); err != nil {
		return nil, err
	}
	r.Logf("%s", s.summary())
	return s, nil
}

// editAll backs up and edits every node's file (checkpointed per node, so
// a resume never edits a file twice) and confirms the edited files are
// identical.
func (c *cutoverStep) editAll(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, files []nodeFile) error {
	var (
		set map[string]string
		err error
	)
	for i, f := range files {
		bitem, eitem := newNodeItem(g, nodeBackup, f.node.Name), newNodeItem(g, nodeEdited, f.node.Name)
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
			if err := checkpointItem(r, bitem, b); err != nil {
				return err
			}
			r.Logf("backed up %s (sha256 %s)", f.node.Name, f.sum)
		}
		switch f.sum {
		case b.New:
			if !hasItem(r, eitem) {
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
		if !hasItem(r, eitem) {
			if err := checkpointItem(r, eitem, map[string]string{"sha256": b.New}); err != nil {
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
		b, _ := cutoverCheckpoint[cutoverBackup](r, newNodeItem(g, nodeBackup, f.node.Name))
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
