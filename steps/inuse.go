package steps

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

// Keys in use. A rollback that deletes keys or an identity from an enclave
// first asks the object store whether it runs on that enclave (README.md,
// "Using it": rollback refuses what could lose data): an object store
// cut over by other means (by hand, as the vendor's page says) would decrypt
// nothing once they are gone (issue 11, input 3).

// kmsStatusTimeout bounds the question to one object store: a node that is
// down answers with an error, not never.
const kmsStatusTimeout = 20 * time.Second

// storeUse is what was learned about one object store (an aistor block).
type storeUse struct {
	addr      string
	inUse     []string // evidence that it runs on the enclave
	ruledOut  []string // evidence that it does not
	doubt     []string // a Key Manager it names that could be the enclave's, and why it could not be ruled out
	unchecked []string // what could not be asked, and why
}

// refuseWhileInUse returns an error wrapping engine.ErrRefused while an
// object store of the runbook runs on enclave enc, however it got there:
// its KMS status (madmin's KMSStatus: name "MinIO KMS" with an endpoint that
// is enc's Key Manager, and no env file naming another enclave) or one of its
// env files (MINIO_KMS_ENCLAVE = enc's name with MINIO_KMS_SERVER at enc's
// Key Manager, running now or at the next restart) says so. Whether an
// endpoint is enc's Key Manager is decided by what it is, not how it is
// spelled (kmIdentity). No --force overrides that. When the runbook has no
// aistor block, one of them could be asked nothing (status and env files
// both unreadable), or one names a Key Manager that could not be ruled out
// as enc's, it refuses unless the rollback is forced (runbook rollback
// --force), naming what was not checked or ruled out; forced, it warns with
// the same list. undo says what the rollback
// would delete, for the messages ("the 51 keys this run imported"). It
// changes nothing.
func refuseWhileInUse(ctx context.Context, r *engine.Run, enc enclaveRef, undo string) error {
	conns, err := r.Connections("aistor")
	if err != nil {
		return fmt.Errorf("check whether the object store uses enclave %s: %w", enc.Name, err)
	}
	if len(conns) == 0 {
		return refuseUnlessForced(r, fmt.Sprintf("the runbook has no aistor block, so no object store was asked whether it runs on enclave %s (neither its KMS status nor its env files' MINIO_KMS_ENCLAVE and MINIO_KMS_SERVER were checked)", enc.Name), undo,
			"could leave an object store that runs on the enclave unable to decrypt its data. Add the object store's aistor block to the runbook so that rollback can ask it, or, once you have checked by hand that nothing uses enclave "+enc.Name+", run runbook rollback --force")
	}
	var uses []storeUse
	id := newKMIdentity(r, enc)
	for _, c := range conns {
		a, ok := c.Block.(*aistorConnection)
		if !ok {
			continue
		}
		uses = append(uses, checkStoreUse(ctx, r, c.Addr, a, enc, id))
	}
	var inUse, doubt, blind, partly []string
	for _, u := range uses {
		switch {
		case len(u.inUse) > 0:
			inUse = append(inUse, fmt.Sprintf("%s: %s", u.addr, strings.Join(u.inUse, "; ")))
		case len(u.doubt) > 0:
			doubt = append(doubt, fmt.Sprintf("%s: %s", u.addr, strings.Join(u.doubt, "; ")))
		case len(u.ruledOut) == 0:
			blind = append(blind, fmt.Sprintf("%s: %s", u.addr, strings.Join(u.unchecked, "; ")))
		default:
			r.Logf("%s does not run on enclave %s: %s", u.addr, enc.Name, strings.Join(u.ruledOut, "; "))
			if len(u.unchecked) > 0 {
				partly = append(partly, fmt.Sprintf("%s: %s", u.addr, strings.Join(u.unchecked, "; ")))
			}
		}
	}
	if len(inUse) > 0 {
		return engine.Refusef("the object store runs on enclave %s (%s): deleting %s would leave it unable to decrypt its data. Move it back to KES first (restore every node's env file and restart every node, or roll back the cutover step that moved it), then roll back again", enc.Name, strings.Join(inUse, "; "), undo)
	}
	if len(doubt) > 0 {
		return refuseUnlessForced(r, fmt.Sprintf("could not rule out that the object store runs on enclave %s (%s)", enc.Name, strings.Join(doubt, "; ")), undo,
			"could leave it unable to decrypt its data. Make that Key Manager reachable from here and run rollback again, or, once you have checked by hand that it is not the Key Manager of enclave "+enc.Name+", run runbook rollback --force")
	}
	if len(blind) > 0 {
		return refuseUnlessForced(r, fmt.Sprintf("could not check whether the object store runs on enclave %s (%s)", enc.Name, strings.Join(blind, "; ")), undo,
			"could leave an object store that runs on the enclave unable to decrypt its data. Make it reachable and run rollback again, or, once you have checked by hand that nothing uses enclave "+enc.Name+", run runbook rollback --force")
	}
	for _, p := range partly {
		r.Warnf("not checked: %s", p)
	}
	return nil
}

// refuseUnlessForced refuses deleting undo because of why ("why: deleting
// undo then"), or, when the rollback is forced, warns with why and lets it
// go ahead.
func refuseUnlessForced(r *engine.Run, why, undo, then string) error {
	if r.Forced() {
		r.Warnf("forced: %s; deleting %s all the same", why, undo)
		return nil
	}
	return engine.Refusef("%s: deleting %s %s", why, undo, then)
}

// checkStoreUse asks one object store, through its env files and its
// admin API, whether it runs on enc.
func checkStoreUse(ctx context.Context, r *engine.Run, addr string, a *aistorConnection, enc enclaveRef, id *kmIdentity) storeUse {
	u := storeUse{addr: addr}
	files := u.checkEnvFiles(ctx, r, a, enc, id)
	u.checkKMSStatus(ctx, r, a, enc, id, files)
	return u
}

// envFilesRead counts the env files checkEnvFiles could read, and of them
// those that name another enclave.
type envFilesRead struct{ read, other int }

// checkEnvFiles judges what the nodes run with now, or after their next
// restart (an edit not yet applied counts: it is on its way).
func (u *storeUse) checkEnvFiles(ctx context.Context, r *engine.Run, a *aistorConnection, enc enclaveRef, id *kmIdentity) envFilesRead {
	var n envFilesRead
	switch {
	case a.Platform() == "kubernetes":
		u.unchecked = append(u.unchecked, "its environment (platform = \"kubernetes\": the Helm values or resource are not read)")
		return n
	case len(a.EnvFiles()) == 0:
		u.unchecked = append(u.unchecked, "its env files (the aistor block names none)")
		return n
	}
	pool := newSSHPool(a.SSHKnownHosts(), a.SSHIdentity())
	defer pool.close()
	for _, f := range a.EnvFiles() {
		node, err := parseEnvNode(f)
		if err != nil {
			u.unchecked = append(u.unchecked, fmt.Sprintf("env file %s: %s", f, oneLine(err)))
			continue
		}
		node.pool = pool
		data, _, err := node.read(ctx, r)
		if err != nil {
			u.unchecked = append(u.unchecked, fmt.Sprintf("env file %s: %s", node.Name, oneLine(err)))
			continue
		}
		env, err := envEffective(data)
		if err != nil {
			u.unchecked = append(u.unchecked, fmt.Sprintf("env file %s: %s", node.Name, oneLine(err)))
			continue
		}
		n.read++
		if u.judgeEnvFile(ctx, r, node.Name, env, enc, id) {
			n.other++
		}
	}
	return n
}

// judgeEnvFile files one env file's KMS settings under in use, in doubt or
// ruled out, and says whether it names another enclave.
func (u *storeUse) judgeEnvFile(ctx context.Context, r *engine.Run, name string, env map[string]string, enc enclaveRef, id *kmIdentity) (other bool) {
	for _, k := range []string{"MINIO_KMS_API_KEY", "MINIO_KMS_KES_API_KEY", "MINIO_ROOT_PASSWORD", "MINIO_SECRET_KEY"} {
		if v := env[k]; v != "" {
			r.AddSecret(v)
		}
	}
	enclave, server := env["MINIO_KMS_ENCLAVE"], env["MINIO_KMS_SERVER"]
	sets := fmt.Sprintf("env file %s sets MINIO_KMS_ENCLAVE=%s and MINIO_KMS_SERVER=%s", name, enclave, server)
	verdict := kmSame
	if enclave == enc.Name && server != "" {
		var why string
		verdict, why = id.judgeAll(ctx, strings.Split(server, ","))
		sets += " (" + why + ")"
	}
	switch {
	case enclave == enc.Name && verdict == kmSame:
		u.inUse = append(u.inUse, sets)
	case enclave == enc.Name && verdict == kmDoubt:
		u.doubt = append(u.doubt, sets)
	case enclave != "":
		u.ruledOut = append(u.ruledOut, sets)
		return true
	case env["MINIO_KMS_KES_ENDPOINT"] != "":
		// Says nothing about a server that has not restarted since the
		// file was put back: the KMS status decides.
		u.ruledOut = append(u.ruledOut, fmt.Sprintf("env file %s configures KES (MINIO_KMS_KES_ENDPOINT=%s)", name, env["MINIO_KMS_KES_ENDPOINT"]))
	default:
		u.ruledOut = append(u.ruledOut, fmt.Sprintf("env file %s sets no MINIO_KMS_ENCLAVE", name))
	}
	return false
}

// checkKMSStatus judges what the running server uses, however it got
// there, from its KMS status; files says what its env files named.
func (u *storeUse) checkKMSStatus(ctx context.Context, r *engine.Run, a *aistorConnection, enc enclaveRef, id *kmIdentity, files envFilesRead) {
	admin, _, err := a.Clients(r)
	if err != nil {
		u.unchecked = append(u.unchecked, fmt.Sprintf("its KMS status (%s): %s", hostOf(a.Endpoint()), oneLine(err)))
		return
	}
	cctx, cancel := context.WithTimeout(ctx, kmsStatusTimeout)
	defer cancel()
	st, err := admin.KMSStatus(cctx)
	if err != nil {
		u.unchecked = append(u.unchecked, fmt.Sprintf("its KMS status (%s): %s", hostOf(a.Endpoint()), oneLine(err)))
		return
	}
	eps := slices.Sorted(maps.Keys(st.Endpoints))
	status := fmt.Sprintf("its KMS status names %q with endpoints %s", st.Name, strings.Join(eps, ", "))
	if st.Name != kmsNameKeyManager {
		u.ruledOut = append(u.ruledOut, status)
		return
	}
	verdict, why := id.judgeAll(ctx, eps)
	switch {
	case verdict == kmOther:
		u.ruledOut = append(u.ruledOut, status+", not the Key Manager of enclave "+enc.Name+" ("+why+")")
	case files.read > 0 && files.other == files.read:
		// The running server uses this Key Manager, and every env file
		// names another enclave of it: it runs on that one. An env file
		// that names KES, or no enclave, does not tell (edited back, not
		// restarted yet): then the status alone decides, as in use.
		u.ruledOut = append(u.ruledOut, status+" ("+why+"), but no env file names enclave "+enc.Name)
	case verdict == kmDoubt:
		u.doubt = append(u.doubt, status+" ("+why+")")
	default:
		u.inUse = append(u.inUse, status+", the Key Manager of enclave "+enc.Name+" ("+why+"), and no env file names another enclave")
	}
}

// judgeAll judges the endpoints an object store names for one Key Manager
// (MINIO_KMS_SERVER's list, or its KMS status): the enclave's when one of
// them is; in doubt when none is and one could not be ruled out; another
// one only when every one is another's. why gives the evidence.
func (id *kmIdentity) judgeAll(ctx context.Context, endpoints []string) (kmVerdict, string) {
	var doubts, others []string
	for _, e := range endpoints {
		if strings.TrimSpace(e) == "" {
			continue
		}
		switch v, why := id.judge(ctx, e); v {
		case kmSame:
			return kmSame, why
		case kmDoubt:
			doubts = append(doubts, why)
		default:
			others = append(others, why)
		}
	}
	switch {
	case len(doubts) > 0:
		return kmDoubt, strings.Join(doubts, "; ")
	case len(others) == 0:
		return kmDoubt, "no endpoint named"
	}
	return kmOther, strings.Join(others, "; ")
}

// oneLine is err's text on one line: a server's answer quoted in an error
// may hold newlines, and the refusal is read as one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
