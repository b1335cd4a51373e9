package engine

import (
	"fmt"
	"sort"
	"sync"

	"github.com/zclconf/go-cty/cty"
)

// Kind tells a connection (no side effects, referenced whole) from a step.
type Kind int

const (
	KindStep Kind = iota
	KindConnection
)

// BlockType describes one block type that a runbook may contain. Step packages
// register their types in init(); the engine knows none of them by name.
type BlockType struct {
	Name string
	Kind Kind
	// New returns a fresh, undecoded instance.
	New func() Block
	// Outputs declares the typed outputs of a step that other blocks may reference
	// as type.name.output. Sensitive outputs are listed in Sensitive.
	Outputs   map[string]cty.Type
	Sensitive []string
	// Credentials are the attributes that hold a credential (an API key, a
	// secret key, a password). The runbook must give each a sensitive value
	// (a sensitive variable or output), never a literal: the runbook text is
	// copied into the journal and the change request.
	Credentials []string
	// Doc is one line shown by validate and graph.
	Doc string
}

var (
	registryMu sync.RWMutex
	registry   = map[string]*BlockType{}
)

// reserved block types belong to the language itself.
var reserved = map[string]bool{"runbook": true, "variable": true, "locals": true, "var": true, "local": true}

// Register adds a block type. It panics on a duplicate or reserved name: that is
// a programming error found at start-up.
func Register(bt BlockType) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if reserved[bt.Name] {
		panic(fmt.Sprintf("engine: block type %q is reserved", bt.Name))
	}
	if _, dup := registry[bt.Name]; dup {
		panic(fmt.Sprintf("engine: block type %q registered twice", bt.Name))
	}
	b := bt
	registry[bt.Name] = &b
}

// LookupType returns the registered block type of that name.
func LookupType(name string) (*BlockType, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	bt, ok := registry[name]
	return bt, ok
}

// TypeNames lists the registered block types, sorted.
func TypeNames() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// outputType is the object type that type.name evaluates to.
func (bt *BlockType) outputType() cty.Type {
	if bt.Kind == KindConnection {
		return ConnectionType
	}
	return cty.Object(bt.Outputs)
}

func (bt *BlockType) isSensitive(output string) bool {
	for _, s := range bt.Sensitive {
		if s == output {
			return true
		}
	}
	return false
}
