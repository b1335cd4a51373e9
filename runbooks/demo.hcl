# The whole procedure of migrate.hcl, rehearsed on this machine by
# `runbook demo`: the bundled KES key store (demo/keystore) served by a real
# KES, the Key Manager emulator, and a real MinIO on KES-era settings with
# encrypted objects in it. The steps are migrate.hcl's, in the same order and
# with the same settings; only the connections name the demo's servers, whose
# addresses and credentials `runbook demo` passes as the variables below.
#
# The demo's MinIO nodes are processes of `runbook demo` itself, so the
# restart command asks it to restart a node (the cutover runs it once per
# node, as it would run `systemctl restart minio` on each host).
runbook {
  name        = "demo"
  description = "Rehearse moving the SSE keys of a KES-backed MinIO into a Key Manager enclave and cutting MinIO over"
}

variable "kes_server" {
  type        = string
  description = "the demo's KES server, https://127.0.0.1:PORT"
}

variable "kes_api_key" {
  type        = string
  sensitive   = true
  description = "the KES admin's API key (kes:v1:…)"
}

variable "km_server" {
  type        = string
  description = "the Key Manager emulator, https://127.0.0.1:PORT"
}

variable "km_api_key" {
  type        = string
  sensitive   = true
  description = "the Key Manager's SysAdmin API key, k1:…"
}

variable "minio_endpoint" {
  type        = string
  description = "node 1 of the demo's MinIO, https://ADDRESS:PORT"
}

variable "root_password" {
  type        = string
  sensitive   = true
  description = "the password of MinIO's root user demo-admin"
}

variable "env_files" {
  type        = list(string)
  default     = []
  description = "the env file of a single-node demo (it needs no mapping)"
}

variable "nodes" {
  type        = map(object({ env_file = string }))
  default     = {}
  description = "every node's env file by server, { \"ADDRESS:PORT\" = { env_file = \"nodes/nodeN/minio.env\" } }: the demo's nodes are local files on one machine, so each is named by the server it controls"
}

variable "enclave" {
  type    = string
  default = "aistor-primary"
}

kes "legacy" {
  server  = var.kes_server
  api_key = var.kes_api_key
  ca_file = "kes/tls/ca.pem"
  config  = "kes/config.yaml"
}

key_manager "target" {
  servers = [var.km_server]
  api_key = var.km_api_key
  ca_file = "key-manager/ca.crt"
}

aistor "demo" {
  endpoint        = var.minio_endpoint
  access_key      = "demo-admin"
  secret_key      = var.root_password
  ca_file         = "nodes/tls/ca.pem"
  env_files       = var.env_files
  nodes           = var.nodes
  # every node starts with --certs-dir nodes/certs (the Key Manager's CA is
  # checked against its CAs/ before the cutover)
  certs_dir       = "nodes/certs"
  restart         = "command"
  restart_command = ["runbook", "demo", "restart-node"]
  log_command     = ["runbook", "demo", "node-log"]
}

prerequisites "preflight" {
  kes         = kes.legacy
  key_manager = key_manager.target
  aistor      = aistor.demo
}

enclave "primary" {
  key_manager = key_manager.target
  name        = var.enclave
  depends_on  = [prerequisites.preflight]
}

identity "aistor" {
  enclave = enclave.primary
  admin   = true
}

migration "keys" {
  from        = kes.legacy
  to          = enclave.primary
  pattern     = "*"
  on_conflict = "fail"
}

verification "keys" {
  source     = kes.legacy
  target     = enclave.primary
  objects    = aistor.demo
  depends_on = [migration.keys]
}

cutover "aistor" {
  aistor           = aistor.demo
  enclave          = enclave.primary
  api_key          = identity.aistor.api_key
  validate_objects = []
  on_failure       = "rollback"
  depends_on       = [verification.keys]
}
