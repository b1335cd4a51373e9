runbook {
  name = "references"
}

variable "region" {
  type    = number
  default = "eu" # ERROR: Invalid default value for variable
}

locals {
  a = local.b # ERROR: Cycle in local values
  b = local.a
  c = exec.x.stdout # ERROR: Invalid reference in local value
}

exec "x" {
  command = ["echo", var.nope] # ERROR: Reference to undeclared input variable
}

exec "y" {
  command    = ["echo", exec.z.stdout, local.nope] # ERROR: Reference to undeclared block; Reference to undeclared local value
  depends_on = [exec.missing] # ERROR: Reference to undeclared block
}

exec "w" {
  command = ["echo", bogus.thing] # ERROR: Unknown reference
}

exec "v" {
  command = ["echo", exec.x.no_such_output] # ERROR: Unsupported attribute
}
