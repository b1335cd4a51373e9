package engine

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// Version is the tool's version, recorded in journals and plans.
var Version = "0.1.0-dev"

// Session is a loaded runbook with its variables: ready to validate, plan,
// apply, resume or roll back.
type Session struct {
	Config   *Config
	Graph    *Graph
	Scope    *Scope
	Redactor *Redactor

	memo sync.Map // Run.Memo: key → *memoEntry
}

type memoEntry struct {
	once sync.Once
	v    any
	made atomic.Bool // v is set: releaseMemo reads it only then
}

// Releaser is a Run.Memo value that holds what must not outlive the apply
// that used it (key material a quiet plan read for its apply): the engine
// calls Release when an apply of the session ends, refused or not.
type Releaser interface{ Release() }

// releaseMemo releases every Releaser the session's steps keep in Memo.
func (s *Session) releaseMemo() {
	s.memo.Range(func(_, e any) bool {
		m := e.(*memoEntry)
		if !m.made.Load() {
			return true
		}
		if r, ok := m.v.(Releaser); ok {
			r.Release()
		}
		return true
	})
}

// Open loads, graphs and evaluates a runbook. requireAll makes every
// variable without a default an error (plan, apply); validate passes false.
func Open(path string, src []byte, in VarInputs, requireAll bool) (*Session, hcl.Diagnostics) {
	cfg, diags := Load(path, src)
	if diags.HasErrors() {
		// Reference and type problems are still worth reporting with syntax
		// errors elsewhere, but not on a file that did not parse.
		if cfg == nil || len(cfg.Files) == 0 {
			return nil, diags
		}
	}
	g, moreDiags := BuildGraph(cfg)
	diags = append(diags, moreDiags...)
	vals, moreDiags := cfg.ResolveVariables(in, requireAll)
	diags = append(diags, moreDiags...)
	rd := &Redactor{}
	for _, v := range cfg.Variables {
		if v.Sensitive && v.Default != cty.NilVal {
			// Refused at load; the refusal quotes the line and must not show it.
			collectStrings(v.Default, rd)
		}
	}
	scope, moreDiags := NewScope(cfg, vals, rd)
	diags = append(diags, moreDiags...)
	return &Session{Config: cfg, Graph: g, Scope: scope, Redactor: rd}, diags
}

// Validate decodes every block with the values known now (outputs of steps
// are unknown) and runs each block type's own checks. It changes nothing.
func (s *Session) Validate() hcl.Diagnostics {
	var diags hcl.Diagnostics
	order := s.Graph.Order()
	if order == nil { // a cycle: check each block anyway, so every problem shows at once
		order = s.Graph.Nodes
	}
	for _, addr := range order {
		b := s.Config.Block(addr)
		inst, _, moreDiags := s.decode(b)
		for _, diag := range moreDiags {
			if !s.Graph.repeatsBadRef(diag) {
				diags = append(diags, diag)
			}
		}
		diags = append(diags, s.checkMeta(b)...)
		if inst != nil && b.BlockType.Kind == KindConnection {
			s.Scope.SetConnection(addr, inst)
		}
	}
	return diags
}

// checkMeta evaluates timeout and retry so that mistakes show at validate.
func (s *Session) checkMeta(b *BlockConfig) hcl.Diagnostics {
	_, _, _, diags := s.meta(b)
	return diags
}

// legacySaltedHash is how journals written before the keyed hash (HashKey)
// bound a sensitive value: SHA-256 with a salt recorded beside it. Only read,
// so that such a run can still be resumed or rolled back.
func legacySaltedHash(salt, name string, v cty.Value) string {
	v, _ = v.UnmarkDeep()
	raw, _ := ctyjson.Marshal(v, v.Type())
	h := sha256.New()
	h.Write([]byte(salt))
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write(raw)
	return hex.EncodeToString(h.Sum(nil))
}

func newSalt() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// RunInfo is the first record of a run: enough to resume or roll back from
// the journal alone.
type RunInfo struct {
	ID           string                     `json:"id"`
	Command      string                     `json:"command"`
	Runbook      string                     `json:"runbook"`
	Dir          string                     `json:"dir"`
	Source       string                     `json:"source"`
	SourceSHA256 string                     `json:"source_sha256"`
	Vars         map[string]json.RawMessage `json:"vars,omitempty"`
	// SensitiveVars are keyed hashes (HashKey.Sum, "hmac-sha256:…") of the
	// sensitive variables, or in older journals salted SHA-256 (Salt).
	SensitiveVars map[string]string `json:"sensitive_vars,omitempty"`
	Salt          string            `json:"salt,omitempty"`
	Targets       []string          `json:"targets,omitempty"`
	Version       string            `json:"version"`
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func (s *Session) runInfo(command string, targets []string, key *HashKey) (*RunInfo, error) {
	abs, err := filepath.Abs(s.Config.Path)
	if err != nil {
		return nil, fmt.Errorf("resolve runbook path: %w", err)
	}
	ri := &RunInfo{
		ID: newSalt()[:12], Command: command, Runbook: abs, Dir: filepath.Dir(abs),
		Source: string(s.Config.Src), SourceSHA256: sha256Hex(s.Config.Src),
		Vars: map[string]json.RawMessage{}, SensitiveVars: map[string]string{},
		Targets: targets, Version: Version,
	}
	for _, v := range s.Config.Variables {
		val := s.Scope.vars[v.Name]
		if v.Sensitive {
			ri.SensitiveVars[v.Name] = key.Sum("var."+v.Name, val)
			continue
		}
		raw, err := ctyjson.Marshal(val, v.Type)
		if err != nil {
			return nil, fmt.Errorf("encode variable %s: %w", v.Name, err)
		}
		ri.Vars[v.Name] = raw
	}
	return ri, nil
}

// checkAgainst compares this session's variables with a recorded run: a
// sensitive variable must be given again with the same value; a non-sensitive
// one must have the recorded value (OpenFromJournal supplies it). journal is
// the run's journal dir, whose secrets/ holds the hash key.
func (s *Session) checkAgainst(ri *RunInfo, journal string) error {
	var problems, hints []string
	var key *HashKey
	var keyErr error
	sum := func(name string, val cty.Value) (string, error) {
		if ri.Salt != "" {
			return legacySaltedHash(ri.Salt, name, val), nil
		}
		if key == nil && keyErr == nil {
			if key, keyErr = LoadHashKey(journal); keyErr != nil {
				keyErr = WithHint(fmt.Errorf("the journal's hash key %s cannot be read (%w), so sensitive variables cannot be checked against the run", filepath.Join(journal, secretsDir, hashKeyFile), keyErr), "restore it from a backup of the journal dir")
			}
		}
		if keyErr != nil {
			return "", keyErr
		}
		return key.Sum("var."+name, val), nil
	}
	for _, v := range s.Config.Variables {
		val := s.Scope.vars[v.Name]
		if v.Sensitive {
			want, recorded := ri.SensitiveVars[v.Name]
			switch {
			case !recorded:
				problems = append(problems, fmt.Sprintf("variable %q was not part of the run", v.Name))
			case !val.IsWhollyKnown():
				problems = append(problems, fmt.Sprintf("sensitive variable %q is never stored", v.Name))
				hints = append(hints, fmt.Sprintf("give %s again with -var %s=… or %s%s", v.Name, v.Name, EnvPrefix, v.Name))
			default:
				got, err := sum(v.Name, val)
				if err != nil {
					return fmt.Errorf("%w: %w", ErrRefused, err)
				}
				if got != want {
					problems = append(problems, fmt.Sprintf("sensitive variable %q differs from the value the run started with", v.Name))
				}
			}
			continue
		}
		raw, ok := ri.Vars[v.Name]
		if !ok {
			continue
		}
		rec, err := ctyjson.Unmarshal(raw, v.Type)
		if err != nil {
			return fmt.Errorf("decode recorded variable %s: %w", v.Name, err)
		}
		if !val.IsWhollyKnown() || !val.Equals(rec).True() {
			problems = append(problems, fmt.Sprintf("variable %q was %s when the run started and is %s now", v.Name, FormatValue(rec), FormatValue(val)))
		}
	}
	if len(problems) > 0 {
		err := Refusef("%s", strings.Join(problems, "; "))
		for _, h := range hints {
			err = WithHint(err, h)
		}
		return err
	}
	return nil
}

// meta evaluates a block's timeout and retry settings.
func (s *Session) meta(b *BlockConfig) (timeout, backoff durationVal, attempts int, diags hcl.Diagnostics) {
	attempts = 1
	if b.Timeout != nil {
		timeout, diags = s.duration(b.Timeout, "timeout")
	}
	if b.Retry != nil {
		v, moreDiags := s.Scope.Eval(b.Retry.Attempts)
		diags = append(diags, moreDiags...)
		v, _ = v.Unmark()
		if !moreDiags.HasErrors() && v.IsKnown() {
			n, ok := numberInt(v)
			if !ok || n < 1 || n > 100 {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid retry attempts", Detail: "attempts is how many times the step is tried in all: a whole number from 1 to 100.", Subject: b.Retry.Attempts.Range().Ptr()})
			} else {
				attempts = n
			}
		}
		if b.Retry.Backoff != nil {
			var moreDiags hcl.Diagnostics
			backoff, moreDiags = s.duration(b.Retry.Backoff, "backoff")
			diags = append(diags, moreDiags...)
		}
	}
	return timeout, backoff, attempts, diags
}

func numberInt(v cty.Value) (int, bool) {
	if v.IsNull() || v.Type() != cty.Number {
		return 0, false
	}
	bf := v.AsBigFloat()
	if !bf.IsInt() {
		return 0, false
	}
	i, _ := bf.Int64()
	return int(i), true
}
