package steps

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
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
	// ServerConfig digests the server configuration the object store ran
	// with before the restart (SHA-256 of the admin API's text; the text
	// holds credentials): MinIO seals config.json with the default key in
	// force when it was last saved, and runs on its defaults when it does
	// not unseal, which only the configuration's content shows.
	ServerConfig string `json:"server_config,omitempty"`
}

// backupName is node N's backup file (N in env_files order, which the
// journal's copy of the runbook fixes).
func backupName(i int, _ *envNode) string {
	return fmt.Sprintf("node%d.env", i+1)
}

// Apply carries out the cutover: preflight (nothing changed yet), write
// every node's new environment, restart every node at once and confirm. On
// a failure it rolls back (on_failure = "rollback") or stops. It may be
// run again on the same journal (resume): what the checkpoints record as
// done is not done again, and a rollback that stopped part-way is
// finished first. Errors: refusals (engine.ErrRefused) before any change;
// engine.ErrWaiting while the platform's operator has a move to make;
// otherwise the first failure, with what was undone.
func (c *cutoverStep) Apply(ctx context.Context, r *engine.Run) error {
	e, err := c.resolve(r)
	if err != nil {
		return err
	}
	defer e.plat.Close()
	g := cutoverGen(r)
	if c.rollbackBegun(r, g) {
		// The automatic rollback of attempt g failed part-way: finish it
		// (without restarting again what it already restarted), then start
		// the next attempt.
		r.Logf("attempt %d was being rolled back when it stopped: finishing that rollback first", g+1)
		if err := c.rollback(ctx, r, e, g); err != nil {
			return fmt.Errorf("finish the rollback of attempt %d: %w", g+1, err)
		}
		if err := rolledBack.Item(strconv.Itoa(g+1)).Put(r, markNow()); err != nil {
			return err
		}
		g++
	}
	if g > 0 {
		r.Logf("attempt %d: the previous attempt was rolled back; starting over", g+1)
	}
	sample, settings, err := c.preflight(ctx, r, e, g)
	if err != nil {
		return err
	}
	if err := e.plat.Write(ctx, r, g, settings.env(c.cfg.APIKey)); err != nil {
		return err
	}
	err = c.restartAndConfirm(ctx, r, e, g, false, sample)
	if err == nil {
		if err := c.removeProbeBucket(ctx, r, e, g); err != nil {
			// The cutover is done: a bucket left over is no cause to undo it.
			r.Warnf("%v; remove it by hand (mc rb --force ALIAS/BUCKET); a rollback of the cutover removes it too", err)
		}
		r.SetOutput("kms", cty.StringVal(kmsNameKeyManager))
		return nil
	}
	if ctx.Err() != nil || errors.Is(err, engine.ErrWaiting) {
		return err
	}
	if e.onFail != "rollback" {
		return fmt.Errorf("%w; on_failure = \"stop\": the nodes are left as they are; runbook rollback restores the original environment, runbook resume tries again", err)
	}
	r.Warnf("cutover failed: %v; rolling back (on_failure = \"rollback\")", err)
	if rbErr := c.rollback(ctx, r, e, g); rbErr != nil {
		return fmt.Errorf("%w; the automatic rollback failed too: %v; the journal records how far it came: runbook rollback finishes it, runbook resume finishes it and tries the cutover again", err, rbErr)
	}
	if err := rolledBack.Item(strconv.Itoa(g+1)).Put(r, markNow()); err != nil {
		return err
	}
	return fmt.Errorf("%w; rolled back automatically: every node has its original environment again and AIStor reads the sample through KES", err)
}

// preflight runs before attempt g's first change: the platform's checks
// (Observe), the default key must be the one the object store runs with
// and be held by the enclave, the object sample must read through KES
// today, the enclave must hold the keys its SSE-KMS objects and the
// buckets' encryption configurations name, and the API key the nodes will
// use must serve them all (proveAPIKey). The sample is checkpointed once
// and reused by every later attempt and by the rollback; the settings
// last, marking the attempt begun. Once begun (a resume), both come from
// the journal and nothing is checked again: the nodes may already run on
// the Key Manager.
func (c *cutoverStep) preflight(ctx context.Context, r *engine.Run, e *cutoverEnv, g int) (*cutoverSample, kmsSettings, error) {
	// A recorded item that does not decode is an error here and below: read
	// as absent, it would begin the attempt again on nodes already changed.
	settings, begun, err := settingsItem(g).Get(r)
	if err != nil {
		return nil, kmsSettings{}, err
	}
	if begun {
		s, _, err := sampleItem.Get(r)
		if err != nil {
			return nil, kmsSettings{}, err
		}
		return &s, settings, nil
	}
	if err := c.refuseOnKeyManager(ctx, r, e, nil); err != nil {
		return nil, kmsSettings{}, err
	}
	v, err := e.plat.Observe(ctx, r)
	if err != nil {
		return nil, kmsSettings{}, fmt.Errorf("check the nodes before the cutover (nothing was changed, no node restarted): %w", err)
	}
	if v.Table != nil {
		if err := r.Checkpoint(engine.TableItem(v.Table.Title), v.Table); err != nil {
			return nil, kmsSettings{}, err
		}
	}
	facts, err := c.observeKMS(ctx, r, e, v)
	if err != nil {
		return nil, kmsSettings{}, err
	}
	if err := c.checkEnclaveHolds(ctx, r, e, defaultKeyNeed(facts.sseKey)); err != nil {
		return nil, kmsSettings{}, err
	}
	// The plan showed a risk where it cannot judge; a refusal stands.
	if _, err := c.checkCutoverAccess(ctx, r, e, facts.sseKey); err != nil {
		return nil, kmsSettings{}, err
	}
	s, recorded, err := sampleItem.Get(r)
	if err != nil {
		return nil, kmsSettings{}, err
	}
	if recorded {
		// An attempt refused after the sample was recorded: the buckets'
		// configurations are judged as they are now.
		if s.BucketKeys, err = c.currentBucketKeys(ctx, r, e); err != nil {
			return nil, kmsSettings{}, err
		}
	} else {
		chosen, err := c.chooseSample(ctx, r, e)
		if err != nil {
			return nil, kmsSettings{}, err
		}
		if err := c.proveSample(ctx, r, e, chosen, facts.sseKey); err != nil {
			return nil, kmsSettings{}, err
		}
		s = *chosen
	}
	needs := sampleKeyNeeds(&s, facts.sseKey)
	for _, k := range needs {
		if err := c.checkEnclaveHolds(ctx, r, e, k); err != nil {
			return nil, kmsSettings{}, err
		}
	}
	if _, _, err := c.proveAPIKey(ctx, r, e, append([]neededKey{defaultKeyNeed(facts.sseKey)}, needs...)); err != nil {
		return nil, kmsSettings{}, err
	}
	if !recorded {
		if err := sampleItem.Put(r, s); err != nil {
			return nil, kmsSettings{}, err
		}
		r.Logf("%s", s.summary())
	}
	settings = e.settings(facts.sseKey)
	if err := settingsItem(g).Put(r, settings); err != nil {
		return nil, kmsSettings{}, err
	}
	return &s, settings, nil
}
