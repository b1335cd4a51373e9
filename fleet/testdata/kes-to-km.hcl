# The fleet tests' runbook: runbooks/migrate.hcl with the object store out of
# the prerequisites and the verification, so that a deployment without an
# object store in the rehearsal (targets = ["exec.site_check"]) migrates and
# proves its keys, and one with a real MinIO is cut over by the same runbook;
# plus a site check before the cutover where the tests inject failures.
runbook {
  name        = "kes-to-key-manager"
  description = "Move SSE keys from KES into a Key Manager enclave and cut AIStor over"
}

# --- KES, the source --------------------------------------------------------

variable "kes_server" {
  type        = string
  description = "the KES server, https://host:port"
}

variable "kes_api_key" {
  type        = string
  sensitive   = true
  description = "a KES API key (kes:v1:…) whose identity may list keys and generate data keys: the admin's, or AIStor's own"
}

variable "kes_ca" {
  type        = string
  description = "the CA certificate that signs the KES server's TLS certificate"
}

variable "kes_config" {
  type        = string
  description = "the KES server config file (from the KES host, or its Kubernetes secret): it names the key store the keys are read from"
}

# --- The Key Manager, the target ---------------------------------------------

variable "km_server" {
  type        = string
  description = "a Key Manager node or its load balancer, https://host:port"
}

variable "km_ca" {
  type        = string
  description = "the CA certificate that signs the Key Manager's TLS certificate"
}

variable "sysadmin_api_key" {
  type        = string
  sensitive   = true
  description = "the Key Manager's SysAdmin API key, k1:…"
}

variable "enclave" {
  type        = string
  default     = "aistor-primary"
  description = "the enclave that receives the keys: created, or an existing empty one"
}

# --- AIStor, the object store -----------------------------------------------

variable "fail_marker" {
  type        = string
  default     = "/nonexistent"
  description = "a file whose existence fails exec.site_check (the tests' injected failure)"
}

variable "hold_marker" {
  type        = string
  default     = "/nonexistent"
  description = "a file whose existence holds exec.site_check until it is removed (the tests' long step)"
}

variable "minio_endpoint" {
  type        = string
  description = "the object store's URL, https://host:port"
}

variable "root_user" {
  type        = string
  description = "an access key with admin rights (the root user)"
}

variable "root_password" {
  type        = string
  sensitive   = true
  description = "its secret key"
}

variable "minio_ca" {
  type        = string
  description = "the CA certificate that signs the object store's TLS certificate"
}

variable "env_files" {
  type        = list(string)
  default     = ["/etc/default/minio"]
  description = "every node's environment file: local paths, or ssh://user@host[:port]/path"
}

variable "restart" {
  type        = string
  default     = "systemd"
  description = "how each node is restarted after its file changed: \"systemd\" or \"command\" (a full stop and start)"
}

variable "restart_command" {
  type        = list(string)
  default     = []
  description = "with restart = \"command\": the argv run once per node"
}

# --- Connections: no side effects -----------------------------------------

# Documented step 1 checks that KES answers /version over TLS the host
# verifies; here TLS is always verified against ca_file (insecure = true
# would have to be written out), for every request, not once by hand.
kes "legacy" {
  server  = var.kes_server
  api_key = var.kes_api_key
  ca_file = var.kes_ca
  # Documented step 5: the KES config file. The keys are read from the key
  # store it names, through KES's own config parser, as kes migrate does.
  config = var.kes_config
}

key_manager "target" {
  servers = [var.km_server]
  api_key = var.sysadmin_api_key
  ca_file = var.km_ca
}

aistor "prod" {
  endpoint        = var.minio_endpoint
  access_key      = var.root_user
  secret_key      = var.root_password
  ca_file         = var.minio_ca
  env_files       = var.env_files
  restart         = var.restart
  restart_command = var.restart_command
}

# --- Steps -------------------------------------------------------------------

# "Before" and documented steps 1, 2 and 5: KES and the Key Manager answer
# /version over verified TLS; their identities have the rights the migration
# needs (KES: list keys; the Key Manager: SysAdmin), which `kes key ls` and
# `minkms env` only suggest; the object store answers to admin credentials;
# the KES config parses and its key store lists completely (its key set is
# bound into the plan). Apply backs up the KES config and a snapshot of the
# key store into the journal dir (0600), confirms that no key was created
# while it ran ("halt creation of new keys" is checked, not assumed), and
# reads sample encrypted objects ("confirm encrypted data reads").
prerequisites "preflight" {
  kes         = kes.legacy
  key_manager = key_manager.target
}

# Documented step 3 (`minkms add-enclave NAME`, or reuse an existing empty
# one): an existing enclave is adopted only if it holds no keys, so the
# migration never mixes with keys of unknown origin. Rollback deletes it only
# if this run created it and it is empty again.
enclave "primary" {
  key_manager = key_manager.target
  name        = var.enclave
  depends_on  = [prerequisites.preflight]
}

# Documented step 4 (`minkms add-identity --admin --enclave NAME`): the API
# key AIStor will use. It is generated here, kept 0600 in the journal dir's
# secrets/ before the identity is registered, and never printed: the cutover
# takes it as a sensitive value, not from a terminal.
identity "aistor" {
  enclave = enclave.primary
  admin   = true
}

# Documented step 6 (`kes migrate --from kes-config.yaml …`), with key
# creation halted: every key of the store is imported (kes migrate silently
# drops all keys after the first 1025), checkpointed one by one so a resume
# imports only what is left; entries that do not parse, and HMAC keys that
# cannot be carried, are named in the plan and the result, never skipped in
# silence. A key already at the target with other material is a conflict.
migration "keys" {
  from        = kes.legacy
  to          = enclave.primary
  pattern     = "*"
  on_conflict = "fail"
}

# Documented step 7 compares two counts (which both stop at 1025 after kes
# migrate, and agree). This proves equality instead: the source and target
# name sets are the same; for every key, ciphertexts sealed under the key
# store's material in each format MinIO may forward (raw; msgpack and JSON
# for keys KES v0.22/v0.23 wrote) decrypt at the Key Manager to the same
# bytes; the KES server serves that store (its complete name set, and data
# keys it generates for a sample decrypt at the Key Manager); and every key
# the object store refers to exists in the enclave.
verification "keys" {
  source     = kes.legacy
  target     = enclave.primary
  depends_on = [migration.keys]
}

# A site-specific last check before the cutover: here, the tests' injected
# failure (a deployment whose var file names an existing fail_marker fails
# at this step, after its keys were migrated and verified).
exec "site_check" {
  command    = ["sh", "-c", "while [ -e \"$HOLD\" ]; do sleep 0.2; done; test ! -e \"$MARKER\" || { echo \"site check failed: $MARKER exists\" >&2; exit 1; }"]
  env        = { MARKER = var.fail_marker, HOLD = var.hold_marker }
  depends_on = [verification.keys]
}

# Documented steps 8 and 9: on every node, comment out MINIO_KMS_KES_* and
# set MINIO_KMS_SERVER, MINIO_KMS_ENCLAVE, MINIO_KMS_API_KEY and
# MINIO_KMS_SSE_KEY (the old MINIO_KMS_KES_KEY_NAME); check the files are
# identical across nodes; restart with a full stop and start (the documented
# admin restart keeps the old variables and fails); wait until healthy;
# confirm the object store reports the Key Manager and that encrypted
# objects read. Every file is backed up first; rollback restores them,
# and refuses once data may have been sealed under the Key Manager.
cutover "aistor" {
  aistor           = aistor.prod
  enclave          = enclave.primary
  api_key          = identity.aistor.api_key
  validate_objects = []
  on_failure       = "rollback"
  depends_on       = [exec.site_check]
}
