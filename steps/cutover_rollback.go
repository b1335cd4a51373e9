package steps

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/runbook-dev/runbook/engine"
)

func (c *cutoverStep) Rollback(ctx context.Context, r *engine.Run) error {
	e, err := c.resolve(r)
	if err != nil {
		return err
	}
	defer e.pool.close()
	if e.a.Platform() == "kubernetes" {
		return c.rollbackKubernetes(ctx, r, e)
	}
	g := cutoverGen(r)
	if g > 0 && len(e.nodes) > 0 && !r.HasCheckpoint(cutoverItem(g, "backup/"+e.nodes[0].Name)) {
		// The last attempt was rolled back automatically and none was begun since.
		g--
		if files, err := c.readAll(ctx, r, e); err == nil {
			all := true
			for _, f := range files {
				if b, ok := cutoverCheckpoint[cutoverBackup](r, cutoverItem(g, "backup/"+f.node.Name)); ok && f.sum != b.Original {
					all = false
				}
			}
			if all {
				r.Logf("already rolled back when the cutover failed: every node has its original env file")
				return nil
			}
		}
	}
	return c.rollback(ctx, r, e, g)
}

// rollback restores attempt g's backups, restarts if the nodes were
// restarted, and confirms AIStor reads through KES again. It refuses when
// objects were written after the restart, unless forced.
func (c *cutoverStep) rollback(ctx context.Context, r *engine.Run, e *cutoverEnv, g int) error {
	var backups []cutoverBackup
	var nodes []*envNode
	for _, n := range e.nodes {
		if b, ok := cutoverCheckpoint[cutoverBackup](r, cutoverItem(g, "backup/"+n.Name)); ok {
			backups = append(backups, b)
			nodes = append(nodes, n)
		}
	}
	if len(backups) == 0 {
		r.Logf("nothing to undo: no env file was backed up or changed")
		return nil
	}
	rs, restarted := cutoverCheckpoint[cutoverRestart](r, cutoverItem(g, "restart"))
	if restarted {
		if err := c.checkNoNewWrites(ctx, r, e, g, rs.At); err != nil {
			return err
		}
	}
	// Every file must be the original or the edited one before any is touched.
	type todo struct {
		n    *envNode
		b    cutoverBackup
		data []byte
	}
	var work []todo
	for i, n := range nodes {
		b := backups[i]
		data, _, err := n.read(ctx, r)
		if err != nil {
			return err
		}
		switch envSHA256(data) {
		case b.Original:
			r.Logf("%s already has its original content", n.Name)
		case b.New:
			orig, err := c.readBackup(r, b)
			if err != nil {
				return err
			}
			work = append(work, todo{n, b, orig})
		default:
			return engine.Refusef("env file %s changed after the cutover edited it (sha256 %s; the cutover wrote %s): restoring the backup would discard that change; compare it with the backup %s in the journal dir's backups/ and restore it by hand", n.Name, envSHA256(data), b.New, b.Backup)
		}
	}
	for _, w := range work {
		if err := w.n.write(ctx, r, w.data, fileMeta{Mode: w.b.Mode, UID: w.b.UID, GID: w.b.GID}); err != nil {
			return err
		}
		r.Logf("restored %s (sha256 %s)", w.n.Name, w.b.Original)
	}
	if !restarted {
		r.Logf("the nodes were not restarted by the cutover: restoring the files is all")
		return nil
	}
	if err := c.restartAll(ctx, r, e); err != nil {
		return fmt.Errorf("restart after restoring the env files: %w", err)
	}
	if err := c.waitHealthy(ctx, r, e, kmsNameKES); err != nil {
		return fmt.Errorf("after restoring the env files: %w", err)
	}
	n, err := c.validate(ctx, r, e)
	if err != nil {
		return fmt.Errorf("after restoring the env files: %w", err)
	}
	r.Logf("AIStor reports %s again; %d object(s) read back", kmsNameKES, n)
	return nil
}

// checkNoNewWrites refuses a rollback once the object store may hold data
// sealed by the Key Manager: any bucket created or object version written
// since the restart began. With rollback --force it lists them and goes on.
func (c *cutoverStep) checkNoNewWrites(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, since time.Time) error {
	_, s3, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	var found []string
	buckets, err := s3.ListBuckets(ctx)
	if err == nil {
	outer:
		for _, b := range buckets {
			if b.CreationDate.After(since) {
				found = append(found, b.Name+"/ (bucket created)")
			}
			lctx, cancel := context.WithCancel(ctx)
			for obj := range s3.ListObjects(lctx, b.Name, minio.ListObjectsOptions{Recursive: true, WithVersions: true}) {
				if obj.Err != nil {
					err = fmt.Errorf("list objects of %s: %w", b.Name, obj.Err)
					cancel()
					break outer
				}
				if obj.LastModified.After(since) {
					found = append(found, b.Name+"/"+obj.Key)
				}
			}
			cancel()
		}
	}
	if err != nil {
		if r.HasCheckpoint(cutoverItem(g, "healthy")) && !r.Forced() {
			return engine.Refusef("cannot list the object store to check for objects written after the cutover's restart at %s (%v): KES may not read what the Key Manager sealed, so the rollback stops; bring the object store up and run rollback again, or force it with runbook rollback --force", since.Format(time.RFC3339), err)
		}
		r.Warnf("cannot list the object store (%v); it never became healthy on the Key Manager after the restart at %s, so nothing can have been sealed by it: rolling back", err, since.Format(time.RFC3339))
		return nil
	}
	if len(found) == 0 {
		r.Logf("no object was written and no bucket created since the restart at %s", since.Format(time.RFC3339))
		return nil
	}
	sort.Strings(found)
	found = dedupeSorted(found)
	shown := found
	if len(shown) > 50 {
		shown = append(append([]string(nil), found[:50]...), fmt.Sprintf("and %d more", len(found)-50))
	}
	msg := fmt.Sprintf("the object store was written after the cutover's restart at %s, so the Key Manager may have sealed data that KES cannot read: %s", since.Format(time.RFC3339), strings.Join(shown, ", "))
	if r.Forced() {
		r.Warnf("rolling back although %s (forced)", msg)
		return nil
	}
	return engine.Refusef("%s. Rolling back would make those objects unreadable: copy them off (and write them again after the rollback) first, or force it with runbook rollback --force", msg)
}

func dedupeSorted(sorted []string) []string {
	out := sorted[:0]
	for i, s := range sorted {
		if i == 0 || s != sorted[i-1] {
			out = append(out, s)
		}
	}
	return out
}
