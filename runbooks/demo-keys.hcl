# The migration-only rehearsal (`runbook demo --keys-only`, and what
# `runbook demo` runs where the real servers cannot be built): the key store
# bundled in demo/keystore (48 keys, in both formats KES writes) is migrated
# into a Key Manager — the emulator that `runbook demo` starts — and every key
# is proven by a cryptographic round trip. No KES server and no object store
# take part, so there is no cutover: demo.hcl rehearses the whole procedure.
runbook {
  name        = "demo-keys"
  description = "Rehearse moving the SSE keys of the bundled KES key store into a Key Manager enclave"
}

variable "km_server" {
  type        = string
  description = "the Key Manager's address, https://host:port"
}

variable "km_ca" {
  type        = string
  description = "the CA certificate that signs the Key Manager's TLS certificate"
}

variable "km_api_key" {
  type        = string
  sensitive   = true
  description = "the Key Manager's SysAdmin API key, k1:…"
}

variable "enclave" {
  type    = string
  default = "demo"
}

# The key store is read through the KES server config, as `kes migrate --from` does.
kes "legacy" {
  config = "demo/kes-config.yaml"
}

key_manager "rehearsal" {
  servers = [var.km_server]
  api_key = var.km_api_key
  ca_file = var.km_ca
}

prerequisites "preflight" {
  kes         = kes.legacy
  key_manager = key_manager.rehearsal
}

enclave "demo" {
  key_manager = key_manager.rehearsal
  name        = var.enclave
  depends_on  = [prerequisites.preflight]
}

identity "aistor" {
  enclave = enclave.demo
  admin   = true
}

migration "keys" {
  from    = kes.legacy
  to      = enclave.demo
  pattern = "*"
}

verification "keys" {
  source     = kes.legacy
  target     = enclave.demo
  depends_on = [migration.keys]
}
