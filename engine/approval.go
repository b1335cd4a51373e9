package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Namespaces of the SSH signatures (ssh-keygen -Y, OpenSSH's SSHSIG format)
// over a plan's fingerprint: one for approvals, one for the plan's author, so
// that neither can be passed off as the other.
const (
	ApprovalNamespace = "runbook-plan"
	AuthorNamespace   = "runbook-plan-author"
)

// Approval is one line of approvals.jsonl.
type Approval struct {
	By          string `json:"by"`
	Comment     string `json:"comment,omitempty"`
	Fingerprint string `json:"fingerprint"`
	Time        string `json:"time"`
	// Signature is an armored SSH signature (ssh-keygen -Y sign, namespace
	// ApprovalNamespace) over SignedMessage(Fingerprint); required when the
	// runbook names allowed signers.
	Signature string `json:"signature,omitempty"`
}

// PlanRecord is a journal record (kind "plan") of a saved plan applied in
// a run: which steps it contained and who approved it.
type PlanRecord struct {
	Dir         string   `json:"dir"`
	Fingerprint string   `json:"fingerprint"`
	Targets     []string `json:"targets,omitempty"`
	Steps       []string `json:"steps"`
	MadeBy      string   `json:"made_by,omitempty"`
	Approvers   []string `json:"approvers,omitempty"`
	// Approvals is ApprovalCheck.Digest of the approvals that counted: with
	// Fingerprint, what identifies the plan as applied.
	Approvals string `json:"approvals,omitempty"`
	// Inputs are the files and observations the plan was checked against
	// when it was applied, with their digests ("file /abs/path" → SHA-256):
	// a file a step runs later in the run must still match (Run.BindFile).
	Inputs map[string]string `json:"inputs,omitempty"`
}

// SignedMessage is the text an author or approver signs: the fingerprint
// and a newline, as `echo sha256:…` prints it.
func SignedMessage(fingerprint string) []byte { return []byte(fingerprint + "\n") }

// Approve appends an approval bound to the plan's fingerprint.
func Approve(dir string, a Approval) error {
	if strings.TrimSpace(a.By) == "" {
		return errors.New("an approval needs the approver's name (--by)")
	}
	f, err := os.OpenFile(filepath.Join(dir, ApprovalsFile), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open approvals: %w", err)
	}
	defer f.Close()
	raw, _ := json.Marshal(a)
	if _, err := f.Write(append(raw, '\n')); err != nil {
		return fmt.Errorf("write approval: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync approvals: %w", err)
	}
	return nil
}

// ReadApprovals returns every approval recorded in a plan directory.
func ReadApprovals(dir string) ([]Approval, error) {
	raw, err := os.ReadFile(filepath.Join(dir, ApprovalsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read approvals: %w", err)
	}
	var out []Approval
	for i, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if line == "" {
			continue
		}
		var a Approval
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			return nil, fmt.Errorf("read approvals: line %d: %w", i+1, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// ApprovalStatus is one approval as judged against a plan.
type ApprovalStatus struct {
	Approval
	Counts bool
	// Why says why it counts ("signed by … key SHA256:…") or not.
	Why string
}

// ApprovalCheck is the judgement of a plan's approvals.
type ApprovalCheck struct {
	Required  int
	Signed    bool // the runbook names allowed signers
	Author    string
	AuthorWhy string // why the author is (not) proven, with allowed signers
	AuthorOK  bool
	Entries   []ApprovalStatus
	Approvers []string // the distinct approvers that count, sorted
}

// CheckApprovals judges every approval recorded in planDir against the plan
// (JudgeApprovals, with the plan's fingerprint, author, plan.sig and allowed
// signers). extra are judged after the recorded ones, as if appended
// (approve checks a new approval before recording it).
func CheckApprovals(planDir string, doc *PlanDoc, extra ...Approval) (*ApprovalCheck, error) {
	approvals, err := ReadApprovals(planDir)
	if err != nil {
		return nil, err
	}
	g := ApprovalGate{Required: doc.Runbook.Approvals, Author: doc.MadeBy, Fingerprint: doc.Fingerprint}
	if doc.Runbook.AllowedSigners != "" {
		g.AllowedSigners = filepath.Join(planDir, filepath.FromSlash(doc.Runbook.AllowedSigners))
		sig, err := os.ReadFile(filepath.Join(planDir, AuthorSigFile))
		if err != nil {
			g.AuthorSigErr = fmt.Errorf("the author's signature %s cannot be read: %s", AuthorSigFile, errors.Unwrap(err))
		}
		g.AuthorSig = string(sig)
	}
	return JudgeApprovals(g, append(approvals, extra...)), nil
}

// ApprovalGate is what approvals are judged against: a plan's, or anything
// else approved the same way (a wave of a fleet rollout, whose Fingerprint
// then names the wave).
type ApprovalGate struct {
	Required int
	// AllowedSigners is an OpenSSH allowed-signers file; empty: approvals
	// are names, not signed.
	AllowedSigners string
	Author         string
	// AuthorSig is the author's armored signature over Fingerprint
	// (AuthorNamespace); AuthorSigErr says why there is none to read.
	AuthorSig    string
	AuthorSigErr error
	Fingerprint  string // what an approval names, and with allowed signers what it signs
	// AuthorSigned is what the author signed, when not Fingerprint.
	AuthorSigned string
}

// JudgeApprovals judges approvals in order: one counts when it names the
// gate's fingerprint, its approver is not the author and has not already
// been counted; with allowed signers, also when its SSH signature verifies
// for that principal (ssh-keygen -Y verify) with a key that no counted
// approver or the author used, and when the author's own signature verifies.
func JudgeApprovals(g ApprovalGate, approvals []Approval) *ApprovalCheck {
	c := &ApprovalCheck{Required: g.Required, Author: g.Author}
	authorKey := ""
	if g.AllowedSigners != "" {
		c.Signed = true
		switch {
		case g.Author == "":
			c.AuthorWhy = "the plan names no author (runbook plan --by NAME --key KEY)"
		case g.AuthorSigErr != nil:
			c.AuthorWhy = g.AuthorSigErr.Error()
		default:
			signed := g.Fingerprint
			if g.AuthorSigned != "" {
				signed = g.AuthorSigned
			}
			key, err := VerifySignature(g.AllowedSigners, g.Author, AuthorNamespace, signed, g.AuthorSig)
			if err != nil {
				c.AuthorWhy = err.Error()
			} else {
				c.AuthorOK, authorKey = true, key
				c.AuthorWhy = fmt.Sprintf("signed by %s with key %s", g.Author, key)
			}
		}
	}
	names, keys := map[string]bool{}, map[string]string{}
	for _, a := range approvals {
		st := ApprovalStatus{Approval: a}
		name := strings.TrimSpace(a.By)
		key := ""
		switch {
		case a.Fingerprint != g.Fingerprint:
			st.Why = "for another version of the plan: does not count"
		case g.Author != "" && strings.EqualFold(name, g.Author):
			st.Why = name + " made the plan and cannot approve it: does not count"
		case c.Signed && a.Signature == "":
			st.Why = "not signed, and the runbook names allowed signers: does not count"
		case names[strings.ToLower(name)]:
			st.Why = name + " approved already, and an approver counts once"
		}
		if st.Why == "" && c.Signed {
			var err error
			key, err = VerifySignature(g.AllowedSigners, name, ApprovalNamespace, g.Fingerprint, a.Signature)
			switch {
			case err != nil:
				st.Why = err.Error() + ": does not count"
			case key == authorKey:
				st.Why = fmt.Sprintf("signed with key %s, the key of the plan's author: does not count", key)
			case keys[key] != "":
				st.Why = fmt.Sprintf("signed with key %s, which %s's approval used already: does not count", key, keys[key])
			}
		}
		if st.Why == "" {
			st.Counts = true
			st.Why = "counts: a name, not signed"
			if c.Signed {
				st.Why = fmt.Sprintf("valid, signed with key %s", key)
				keys[key] = name
			}
			names[strings.ToLower(name)] = true
			c.Approvers = append(c.Approvers, name)
		}
		c.Entries = append(c.Entries, st)
	}
	sort.Strings(c.Approvers)
	return c
}

// Digest identifies the approvals that count: SHA-256 (hex) of their
// records (name, fingerprint, time, signature), one JSON line each, in the
// order recorded; the empty string's digest when none counts.
func (c *ApprovalCheck) Digest() string {
	var b bytes.Buffer
	for _, e := range c.Entries {
		if e.Counts {
			raw, _ := json.Marshal(e.Approval)
			b.Write(append(raw, '\n'))
		}
	}
	return sha256Hex(b.Bytes())
}

// Enough refuses a plan that does not have the approvals it needs.
func (c *ApprovalCheck) Enough(planDir string) error {
	if c.Required == 0 {
		return nil
	}
	if c.Signed && !c.AuthorOK {
		return Refusef("the plan's author is not proven: %s. Make the plan again with runbook plan FILE -out %s --by NAME --key KEY", c.AuthorWhy, planDir)
	}
	if len(c.Approvers) >= c.Required {
		return nil
	}
	var why []string
	for _, e := range c.Entries {
		if !e.Counts {
			why = append(why, Printable(e.By+": "+e.Why))
		}
	}
	how := "runbook approve " + planDir + " --by NAME"
	if c.Signed {
		how += " --key KEY"
	}
	msg := fmt.Sprintf("the plan has %d approval(s) (%s) and this runbook requires %d from distinct approvers", len(c.Approvers), Printable(strings.Join(c.Approvers, ", ")), c.Required)
	if len(why) > 0 {
		msg += "; not counted: " + strings.Join(why, "; ")
	}
	return Refusef("%s. Have it approved: %s", msg, how)
}

// goodSignature is how ssh-keygen -Y verify reports success (OpenSSH 8.1+):
// Good "NAMESPACE" signature for PRINCIPAL with TYPE key SHA256:….
var goodSignature = regexp.MustCompile(`Good "[^"]*" signature for .* with \S+ key (SHA256:[A-Za-z0-9+/=]+)`)

// VerifySignature checks an armored SSH signature over SignedMessage(
// fingerprint) by principal under namespace against an OpenSSH allowed-signers
// file, with ssh-keygen -Y verify, and returns the signing key's fingerprint.
func VerifySignature(allowedSigners, principal, namespace, fingerprint, signature string) (string, error) {
	if strings.TrimSpace(signature) == "" {
		return "", errors.New("no signature")
	}
	tmp, err := os.CreateTemp("", "runbook-sig-*")
	if err != nil {
		return "", fmt.Errorf("write signature for ssh-keygen: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(signature); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write signature for ssh-keygen: %w", err)
	}
	tmp.Close()
	cmd := exec.Command(sshKeygen(), "-Y", "verify", "-f", allowedSigners, "-I", principal, "-n", namespace, "-s", tmp.Name())
	cmd.Env = ChildEnv(nil)
	cmd.Stdin = bytes.NewReader(SignedMessage(fingerprint))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return "", fmt.Errorf("the signature does not verify as %s's in %s (%s)", principal, allowedSigners, lastLine(out))
	case err != nil:
		return "", fmt.Errorf("run ssh-keygen -Y verify: %w (install OpenSSH's ssh-keygen, 8.1 or later)", err)
	}
	m := goodSignature.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("ssh-keygen -Y verify accepted the signature but did not name the key (%s)", lastLine(out))
	}
	return string(m[1]), nil
}

// Sign makes an armored SSH signature over SignedMessage(fingerprint) with
// the private key at keyPath (or, for a public key file, its key in the ssh
// agent), by ssh-keygen -Y sign. ssh-keygen asks for a passphrase itself.
func Sign(keyPath, namespace, fingerprint string) (string, error) {
	cmd := exec.Command(sshKeygen(), "-Y", "sign", "-f", keyPath, "-n", namespace)
	cmd.Env = ChildEnv(nil)
	cmd.Stdin = bytes.NewReader(SignedMessage(fingerprint))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("sign with %s: ssh-keygen -Y sign failed (%s)", keyPath, lastLine(stderr.Bytes()))
		}
		return "", fmt.Errorf("sign with %s: %w (install OpenSSH's ssh-keygen, 8.1 or later)", keyPath, err)
	}
	if !bytes.Contains(stdout.Bytes(), []byte("BEGIN SSH SIGNATURE")) {
		return "", fmt.Errorf("sign with %s: ssh-keygen -Y sign wrote no signature", keyPath)
	}
	return stdout.String(), nil
}

// sshKeygen is OpenSSH's ssh-keygen, found on PATH.
func sshKeygen() string { return "ssh-keygen" }

func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
