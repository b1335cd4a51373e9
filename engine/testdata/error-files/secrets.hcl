runbook {
  name            = "secrets"
  allowed_signers = "no-such-allowed-signers" # ERROR: Cannot read allowed_signers
}

variable "token" {
  type      = string
  sensitive = true
  default   = "S3cret" # ERROR: Sensitive variable with a default
}

variable "plain" {
  type    = string
  default = "k1:not-secret-enough"
}

variable "km_key" {
  type      = string
  sensitive = true
}

kes "legacy" {
  server  = "https://127.0.0.1:7373"
  api_key = "kes:v1:ACQpoGqx3rHHjT938Hfu5hVVQJHZWSqVI2Xp1KlYxFVw" # ERROR: Credential not sensitive
}

key_manager "from_plain" {
  servers = ["https://127.0.0.1:7374"]
  api_key = var.plain # ERROR: Credential not sensitive
}

key_manager "from_sensitive" {
  servers = ["https://127.0.0.1:7374"]
  api_key = var.km_key
}

aistor "prod" {
  endpoint   = "https://127.0.0.1:9000"
  access_key = "minioadmin"
  secret_key = "minio-Secret" # ERROR: Credential not sensitive
}
