package engine

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Graph is the dependency graph of a runbook's blocks: an edge from a block to
// each block it refers to or names in depends_on.
type Graph struct {
	cfg   *Config
	Nodes []string            // addresses, in declaration order
	Deps  map[string][]string // addr → the addresses it depends on, sorted
	order []string
	// badRefs are the references that name nothing; evaluating them would
	// only repeat that error.
	badRefs []hcl.Range
}

// BuildGraph finds every reference, reports references to undeclared blocks,
// variables and locals, and any cycle naming all of its members.
func BuildGraph(cfg *Config) (*Graph, hcl.Diagnostics) {
	g := &Graph{cfg: cfg, Deps: map[string][]string{}}
	rc := &refChecker{cfg: cfg, g: g, vars: map[string]bool{}, locals: map[string]bool{}}
	for _, v := range cfg.Variables {
		rc.vars[v.Name] = true
	}
	for _, l := range cfg.Locals {
		rc.locals[l.Name] = true
	}
	for _, l := range cfg.Locals {
		for _, tr := range l.Expr.Variables() {
			if r := tr.RootName(); r == "var" || r == "local" {
				rc.check(tr, "A local value")
			}
		}
	}
	for _, b := range cfg.Blocks {
		g.Nodes = append(g.Nodes, b.Addr())
		g.Deps[b.Addr()] = rc.blockDeps(b)
	}
	diags := rc.diags
	if cycles := g.cycles(); len(cycles) > 0 {
		for _, c := range cycles {
			first := cfg.Block(c[0])
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Dependency cycle",
				Detail:   fmt.Sprintf("These blocks depend on each other in a cycle: %s. Remove a reference or a depends_on entry to break it.", strings.Join(c, " → ")+" → "+c[0]),
				Subject:  first.DeclRange.Ptr(),
			})
		}
		return g, diags
	}
	g.order = g.topo()
	return g, diags
}

// refChecker resolves the references of a runbook, collecting a
// diagnostic for each that names nothing declared.
type refChecker struct {
	cfg          *Config
	g            *Graph
	vars, locals map[string]bool
	diags        hcl.Diagnostics
}

// check resolves one reference: the address of the block it names, or
// false for a variable, a local, or a reference that names nothing (then
// reported, and remembered so that decoding does not report it again).
func (rc *refChecker) check(tr hcl.Traversal, what string) (string, bool) {
	before := len(rc.diags)
	defer func() {
		if len(rc.diags) > before {
			rc.g.badRefs = append(rc.g.badRefs, tr.SourceRange())
		}
	}()
	root := tr.RootName()
	switch root {
	case "var", "local":
		name := secondName(tr)
		if root == "var" && !rc.vars[name] {
			rc.diags = append(rc.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Reference to undeclared input variable", Detail: fmt.Sprintf("No variable named %q is declared. Declare it with a variable %q {} block.", name, name), Subject: tr.SourceRange().Ptr()})
		}
		if root == "local" && !rc.locals[name] {
			rc.diags = append(rc.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Reference to undeclared local value", Detail: fmt.Sprintf("No local value named %q is declared in a locals block.", name), Subject: tr.SourceRange().Ptr()})
		}
		return "", false
	}
	if _, ok := LookupType(root); !ok {
		detail := fmt.Sprintf("%s refers to %q, which is neither a block type nor var or local.", what, root)
		if s := nameSuggestion(root, append([]string{"var", "local"}, TypeNames()...)); s != "" {
			detail += fmt.Sprintf(" Did you mean %q?", s)
		}
		rc.diags = append(rc.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unknown reference", Detail: detail, Subject: tr.SourceRange().Ptr()})
		return "", false
	}
	addr, d := rc.cfg.refAddr(tr)
	if d != nil {
		rc.diags = append(rc.diags, d)
		return "", false
	}
	return addr, true
}

// blockDeps returns, sorted, the blocks b depends on: those its body
// refers to and those its depends_on names. Its timeout and retry may
// refer to variables and locals only.
func (rc *refChecker) blockDeps(b *BlockConfig) []string {
	deps := map[string]bool{}
	for _, tr := range bodyTraversals(b.Body) {
		if addr, ok := rc.check(tr, "The "+b.Addr()+" block"); ok && addr != b.Addr() {
			deps[addr] = true
		} else if ok {
			rc.diags = append(rc.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Self-reference", Detail: fmt.Sprintf("%s cannot refer to itself.", b.Addr()), Subject: tr.SourceRange().Ptr()})
		}
	}
	meta := map[string][]hcl.Expression{"timeout": {b.Timeout}}
	if b.Retry != nil {
		meta["retry"] = []hcl.Expression{b.Retry.Attempts, b.Retry.Backoff}
	}
	for _, what := range []string{"timeout", "retry"} {
		for _, expr := range meta[what] {
			if expr != nil {
				for _, tr := range expr.Variables() {
					rc.check(tr, what)
				}
			}
		}
	}
	for _, tr := range b.DependsOn {
		addr, d := rc.cfg.refAddr(tr)
		switch {
		case d != nil: // reported by Load
		case addr == b.Addr():
			rc.diags = append(rc.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Self-reference", Detail: fmt.Sprintf("%s cannot depend on itself.", b.Addr()), Subject: tr.SourceRange().Ptr()})
		default:
			deps[addr] = true
		}
	}
	return slices.Sorted(maps.Keys(deps))
}

// bodyTraversals lists the references in every expression of a body,
// including nested blocks.
func bodyTraversals(body hcl.Body) []hcl.Traversal {
	sb, ok := body.(*hclsyntax.Body)
	if !ok {
		attrs, _ := body.JustAttributes()
		var out []hcl.Traversal
		for _, a := range attrs {
			out = append(out, a.Expr.Variables()...)
		}
		return out
	}
	var out []hcl.Traversal
	names := make([]string, 0, len(sb.Attributes))
	for n := range sb.Attributes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if n == "depends_on" || n == "timeout" {
			continue // meta-arguments are checked on their own
		}
		out = append(out, sb.Attributes[n].Expr.Variables()...)
	}
	for _, blk := range sb.Blocks {
		if blk.Type == "retry" {
			continue
		}
		out = append(out, bodyTraversals(blk.Body)...)
	}
	return out
}

// cycles returns each strongly connected component with more than one member
// (Tarjan), members sorted and rotated so the report is the same every run.
func (g *Graph) cycles() [][]string {
	index, low := map[string]int{}, map[string]int{}
	onStack := map[string]bool{}
	var stack []string
	var out [][]string
	next := 0
	var strong func(v string)
	strong = func(v string) {
		index[v], low[v] = next, next
		next++
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range g.Deps[v] {
			if _, seen := index[w]; !seen {
				strong(w)
				low[v] = min(low[v], low[w])
			} else if onStack[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] == index[v] {
			var comp []string
			for {
				w := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				onStack[w] = false
				comp = append(comp, w)
				if w == v {
					break
				}
			}
			if len(comp) > 1 {
				out = append(out, g.cycleOrder(comp))
			}
		}
	}
	nodes := append([]string(nil), g.Nodes...)
	sort.Strings(nodes)
	for _, n := range nodes {
		if _, seen := index[n]; !seen {
			strong(n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// cycleOrder walks the component from its smallest member along dependencies,
// so the report reads as the cycle itself: a → b → c → a.
func (g *Graph) cycleOrder(comp []string) []string {
	in := map[string]bool{}
	for _, c := range comp {
		in[c] = true
	}
	sort.Strings(comp)
	path := []string{comp[0]}
	seen := map[string]bool{comp[0]: true}
	for cur := comp[0]; ; {
		nextNode := ""
		for _, d := range g.Deps[cur] {
			if in[d] && !seen[d] {
				nextNode = d
				break
			}
		}
		if nextNode == "" {
			break
		}
		path = append(path, nextNode)
		seen[nextNode] = true
		cur = nextNode
	}
	for _, c := range comp { // members the walk did not reach still belong to the report
		if !seen[c] {
			path = append(path, c)
		}
	}
	return path
}

// topo is a stable topological order: dependencies first, ties in declaration order.
func (g *Graph) topo() []string {
	done := map[string]bool{}
	var order []string
	for progress := true; progress && len(order) < len(g.Nodes); {
		progress = false
		for _, n := range g.Nodes {
			if done[n] {
				continue
			}
			ready := true
			for _, d := range g.Deps[n] {
				if !done[d] {
					ready = false
					break
				}
			}
			if ready {
				done[n] = true
				order = append(order, n)
				progress = true
				break
			}
		}
	}
	return order
}

// Order is the execution order: every block after what it depends on.
func (g *Graph) Order() []string { return g.order }

// Dependents returns the blocks that depend on addr directly.
func (g *Graph) Dependents(addr string) []string {
	var out []string
	for _, n := range g.Nodes {
		for _, d := range g.Deps[n] {
			if d == addr {
				out = append(out, n)
			}
		}
	}
	return out
}

// Ancestors returns addr's transitive dependencies.
func (g *Graph) Ancestors(addr string) map[string]bool {
	out := map[string]bool{}
	var walk func(string)
	walk = func(n string) {
		for _, d := range g.Deps[n] {
			if !out[d] {
				out[d] = true
				walk(d)
			}
		}
	}
	walk(addr)
	return out
}

// DOT renders the graph for Graphviz.
func (g *Graph) DOT() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "digraph %q {\n  rankdir = \"LR\";\n", g.cfg.Name)
	for _, n := range g.order {
		b := g.cfg.Block(n)
		shape := "box"
		if b.BlockType.Kind == KindConnection {
			shape = "ellipse"
		}
		fmt.Fprintf(&sb, "  %q [shape = %s];\n", n, shape)
	}
	for _, n := range g.order {
		for _, d := range g.Deps[n] {
			fmt.Fprintf(&sb, "  %q -> %q;\n", d, n)
		}
	}
	sb.WriteString("}\n")
	return sb.String()
}

// repeatsBadRef reports whether a diagnostic from evaluation is about a
// reference that graph building already reported.
func (g *Graph) repeatsBadRef(d *hcl.Diagnostic) bool {
	for _, r := range g.badRefs {
		if d.Subject != nil && d.Subject.Overlaps(r) {
			return true
		}
	}
	return false
}
