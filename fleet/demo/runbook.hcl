# runbook fleet demo's runbook: runbooks/demo.hcl (the KES → Key Manager
# migration rehearsed on embedded defaults) with the KES config a variable,
# so that each deployment of the demo fleet migrates its own key store into
# its own enclave of one Key Manager emulator, every key proven by a
# cryptographic round trip. No KES server and no object store take part, so
# there is no cutover.
runbook {
  name        = "demo"
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

variable "kes_config" {
  type        = string
  description = "the KES server config naming this deployment's fs key store"
}

variable "enclave" {
  type    = string
  default = "demo"
}

# The key store is read through the KES server config, as `kes migrate --from` does.
kes "legacy" {
  config = var.kes_config
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
