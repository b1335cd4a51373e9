package steps

import (
	"context"
	"fmt"
	"net/url"
	"sort"
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
	unchecked []string // what could not be asked, and why
}

// refuseWhileInUse returns an error wrapping engine.ErrRefused while an
// object store of the runbook runs on enclave enc, however it got there:
// its KMS status (madmin's KMSStatus: name "MinIO KMS" with an endpoint of
// enc's Key Manager, and no env file naming another enclave) or one of its
// env files (MINIO_KMS_ENCLAVE = enc's name with MINIO_KMS_SERVER at enc's
// Key Manager, running now or at the next restart) says so. No --force
// overrides that. When the runbook has no aistor block, or one of them could
// be asked nothing (status and env files both unreadable), it refuses unless
// the rollback is forced (runbook rollback --force), naming what was not
// checked; forced, it warns with the same list. undo says what the rollback
// would delete, for the messages ("the 51 keys this run imported"). It
// changes nothing.
func refuseWhileInUse(ctx context.Context, r *engine.Run, enc enclaveRef, undo string) error {
	conns, err := r.Connections("aistor")
	if err != nil {
		return fmt.Errorf("check whether the object store uses enclave %s: %w", enc.Name, err)
	}
	if len(conns) == 0 {
		why := fmt.Sprintf("the runbook has no aistor block, so no object store was asked whether it runs on enclave %s (neither its KMS status nor its env files' MINIO_KMS_ENCLAVE and MINIO_KMS_SERVER were checked)", enc.Name)
		if r.Forced() {
			r.Warnf("forced: %s; deleting %s all the same", why, undo)
			return nil
		}
		return engine.Refusef("%s: deleting %s could leave an object store that runs on the enclave unable to decrypt its data. Add the object store's aistor block to the runbook so that rollback can ask it, or, once you have checked by hand that nothing uses enclave %s, run runbook rollback --force", why, undo, enc.Name)
	}
	var uses []storeUse
	for _, c := range conns {
		a, ok := c.Block.(*aistorConnection)
		if !ok {
			continue
		}
		uses = append(uses, checkStoreUse(ctx, r, c.Addr, a, enc))
	}
	var inUse, blind, partly []string
	for _, u := range uses {
		switch {
		case len(u.inUse) > 0:
			inUse = append(inUse, fmt.Sprintf("%s: %s", u.addr, strings.Join(u.inUse, "; ")))
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
	if len(blind) > 0 {
		why := fmt.Sprintf("could not check whether the object store runs on enclave %s (%s)", enc.Name, strings.Join(blind, "; "))
		if r.Forced() {
			r.Warnf("forced: %s; deleting %s all the same", why, undo)
			return nil
		}
		return engine.Refusef("%s: deleting %s could leave an object store that runs on the enclave unable to decrypt its data. Make it reachable and run rollback again, or, once you have checked by hand that nothing uses enclave %s, run runbook rollback --force", why, undo, enc.Name)
	}
	for _, p := range partly {
		r.Warnf("not checked: %s", p)
	}
	return nil
}

// checkStoreUse asks one object store, through its admin API and its env
// files, whether it runs on enc.
func checkStoreUse(ctx context.Context, r *engine.Run, addr string, a *aistorConnection, enc enclaveRef) storeUse {
	u := storeUse{addr: addr}
	km := endpointSet(enc.KM.Endpoints())

	// The env files: what the nodes run with now, or after their next
	// restart (an edit not yet applied counts: it is on its way).
	envRead, envOther := 0, 0
	if a.Platform() == "kubernetes" {
		u.unchecked = append(u.unchecked, "its environment (platform = \"kubernetes\": the Helm values or resource are not read)")
	} else if len(a.EnvFiles()) == 0 {
		u.unchecked = append(u.unchecked, "its env files (the aistor block names none)")
	} else {
		pool := newSSHPool(a.SSHKnownHosts(), a.SSHIdentity())
		defer pool.close()
		for _, f := range a.EnvFiles() {
			n, err := parseEnvNode(f)
			if err != nil {
				u.unchecked = append(u.unchecked, fmt.Sprintf("env file %s: %s", f, oneLine(err)))
				continue
			}
			n.pool = pool
			data, _, err := n.read(ctx, r)
			if err != nil {
				u.unchecked = append(u.unchecked, fmt.Sprintf("env file %s: %s", n.Name, oneLine(err)))
				continue
			}
			env, err := envEffective(data)
			if err != nil {
				u.unchecked = append(u.unchecked, fmt.Sprintf("env file %s: %s", n.Name, oneLine(err)))
				continue
			}
			for _, k := range []string{"MINIO_KMS_API_KEY", "MINIO_KMS_KES_API_KEY", "MINIO_ROOT_PASSWORD", "MINIO_SECRET_KEY"} {
				if v := env[k]; v != "" {
					r.AddSecret(v)
				}
			}
			envRead++
			enclave, server := env["MINIO_KMS_ENCLAVE"], env["MINIO_KMS_SERVER"]
			servers := strings.Split(server, ",")
			switch {
			case enclave == enc.Name && (server == "" || overlaps(endpointSet(servers), km)):
				u.inUse = append(u.inUse, fmt.Sprintf("env file %s sets MINIO_KMS_ENCLAVE=%s and MINIO_KMS_SERVER=%s", n.Name, enclave, server))
			case enclave != "":
				envOther++
				u.ruledOut = append(u.ruledOut, fmt.Sprintf("env file %s sets MINIO_KMS_ENCLAVE=%s and MINIO_KMS_SERVER=%s", n.Name, enclave, server))
			case env["MINIO_KMS_KES_ENDPOINT"] != "":
				// Says nothing about a server that has not restarted since
				// the file was put back: the KMS status below decides.
				u.ruledOut = append(u.ruledOut, fmt.Sprintf("env file %s configures KES (MINIO_KMS_KES_ENDPOINT=%s)", n.Name, env["MINIO_KMS_KES_ENDPOINT"]))
			default:
				u.ruledOut = append(u.ruledOut, fmt.Sprintf("env file %s sets no MINIO_KMS_ENCLAVE", n.Name))
			}
		}
	}

	// The KMS status: what the running server uses, however it got there.
	admin, _, err := a.Clients(r)
	if err != nil {
		u.unchecked = append(u.unchecked, fmt.Sprintf("its KMS status (%s): %s", hostOf(a.Endpoint()), oneLine(err)))
		return u
	}
	cctx, cancel := context.WithTimeout(ctx, kmsStatusTimeout)
	defer cancel()
	st, err := admin.KMSStatus(cctx)
	if err != nil {
		u.unchecked = append(u.unchecked, fmt.Sprintf("its KMS status (%s): %s", hostOf(a.Endpoint()), oneLine(err)))
		return u
	}
	var eps []string
	for ep := range st.Endpoints {
		eps = append(eps, ep)
	}
	sort.Strings(eps)
	status := fmt.Sprintf("its KMS status names %q with endpoints %s", st.Name, strings.Join(eps, ", "))
	switch {
	case st.Name != kmsNameKeyManager:
		u.ruledOut = append(u.ruledOut, status)
	case !overlaps(endpointSet(eps), km):
		u.ruledOut = append(u.ruledOut, status+", not the Key Manager of enclave "+enc.Name)
	case envRead > 0 && envOther == envRead:
		// The running server uses this Key Manager, and every env file
		// names another enclave of it: it runs on that one. An env file
		// that names KES, or no enclave, does not tell (edited back, not
		// restarted yet): then the status alone decides, as in use.
		u.ruledOut = append(u.ruledOut, status+", the Key Manager of enclave "+enc.Name+", but no env file names that enclave")
	default:
		u.inUse = append(u.inUse, status+", the Key Manager of enclave "+enc.Name+", and no env file names another enclave")
	}
	return u
}

// endpointSet normalises Key Manager endpoints ("https://kms-1:7373",
// "kms-1:7373") to lowercase host:port.
func endpointSet(endpoints []string) map[string]bool {
	set := map[string]bool{}
	for _, e := range endpoints {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if !strings.Contains(e, "://") {
			e = "https://" + e
		}
		if u, err := url.Parse(e); err == nil && u.Host != "" {
			set[strings.ToLower(u.Host)] = true
		}
	}
	return set
}

func overlaps(a, b map[string]bool) bool {
	for k := range a {
		if b[k] {
			return true
		}
	}
	return false
}

// oneLine is err's text on one line: a server's answer quoted in an error
// may hold newlines, and the refusal is read as one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
