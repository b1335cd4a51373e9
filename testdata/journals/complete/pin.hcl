# A runbook whose journals, written by the tree of main at 6d1aac7, are kept
# in testdata/journals: every step type whose checkpoints are pinned.
runbook {
  name = "pin"
}

variable "km_api_key" {
  type      = string
  sensitive = true
}

kes "legacy" {
  config = "kes/kes-config.yaml"
}

key_manager "target" {
  servers = [trimspace(file("km/server"))]
  api_key = var.km_api_key
  ca_file = "km/ca.crt"
}

prerequisites "preflight" {
  kes         = kes.legacy
  key_manager = key_manager.target
}

enclave "primary" {
  key_manager = key_manager.target
  name        = "pinned"
  depends_on  = [prerequisites.preflight]
}

identity "aistor" {
  enclave = enclave.primary
  admin   = true
}

migration "keys" {
  from        = kes.legacy
  to          = enclave.primary
  parallelism = 1
}

verification "keys" {
  source      = kes.legacy
  target      = enclave.primary
  parallelism = 1
  depends_on  = [migration.keys, identity.aistor]
}

exec "mark" {
  command          = ["sh", "-c", "echo applied >> marks"]
  rollback_command = ["sh", "-c", "echo undone >> marks"]
  depends_on       = [verification.keys]
}
