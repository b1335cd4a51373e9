//go:build tools

// Package tools pins the HashiCorp Vault server that the vault key store
// tests run against (KES's key store; see prepare.sh for its sdk).
package tools

import _ "github.com/hashicorp/vault"
