package steps

import (
	"context"
	"fmt"

	"github.com/minio/kms-go/kms"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

// enclaveOutputs are what an enclave step exposes to the blocks that refer to
// it (`to = enclave.primary`).
var enclaveOutputs = map[string]cty.Type{"name": cty.String, "key_manager": engine.ConnectionType}

// enclaveRef is a decoded reference to an enclave step.
type enclaveRef struct {
	Name string
	KM   *keyManagerConnection
	Addr string // the key_manager block's address
}

// enclaveFrom reads a reference such as enclave.primary.
func enclaveFrom(v cty.Value) (enclaveRef, error) {
	if v.IsNull() || !v.IsKnown() || !v.Type().IsObjectType() || !v.Type().HasAttribute("name") || !v.Type().HasAttribute("key_manager") {
		return enclaveRef{}, fmt.Errorf("expected a reference to an enclave block, such as enclave.primary")
	}
	name := v.GetAttr("name")
	if name.IsNull() || !name.IsKnown() {
		return enclaveRef{}, fmt.Errorf("the enclave's name is not known yet")
	}
	km, addr, err := engine.ConnectionFrom[*keyManagerConnection](v.GetAttr("key_manager"), "key_manager")
	if err != nil {
		return enclaveRef{}, err
	}
	return enclaveRef{Name: name.AsString(), KM: km, Addr: addr}, nil
}

// enclaveListPage is the page the listing of an enclave's keys asks for.
// The Key Manager caps a request's Limit at its own maximum (kms-go
// ListRequest.Limit: without one, "the server limits listing results to a
// reasonable max. size"), so a large one costs nothing and saves a round
// trip per default page: over a WAN, 10 ms per 1,000 keys at the
// emulator's default page (docs/emulator.md: 1,000 names, 10,000 at most).
const enclaveListPage = 10000

// listEnclaveKeys returns every key name in an enclave, following
// continuation across pages.
func listEnclaveKeys(ctx context.Context, c *kms.Client, enclave string) ([]string, error) {
	return listEnclaveKeysPaged(ctx, c, enclave, enclaveListPage)
}

// listEnclaveKeysPaged is listEnclaveKeys asking for pages of limit keys.
func listEnclaveKeysPaged(ctx context.Context, c *kms.Client, enclave string, limit int) ([]string, error) {
	var names []string
	req := &kms.ListRequest{Enclave: enclave, Limit: limit}
	for {
		page, err := c.ListKeys(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("list keys of enclave %s: %w", enclave, err)
		}
		for _, k := range page.Items {
			names = append(names, k.Name)
		}
		if page.ContinueAt == "" || len(page.Items) == 0 {
			return names, nil
		}
		req = &kms.ListRequest{Enclave: enclave, Prefix: req.Prefix, ContinueAt: page.ContinueAt, Limit: limit}
	}
}
