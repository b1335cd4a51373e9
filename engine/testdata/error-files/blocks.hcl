runbook {
  name = "blocks"
}

runbook { # ERROR: Duplicate runbook block
  name = "again"
}

widget "x" { # ERROR: Unsupported block type
}

exec { # ERROR: Wrong number of block labels
  command = ["true"]
}

exec "a" {
  command = ["true"]
}

exec "a" { # ERROR: Duplicate exec block
  command = ["true"]
}

exec "b" {
  command = ["true"]
  colour  = "red" # ERROR: Unsupported argument
}

exec "c" { # ERROR: Missing required argument
}

exec "d" {
  command = "true" # ERROR: Unsuitable value type
  retry {
    attempts = 0 # ERROR: Invalid retry attempts
  }
}

exec "e" {
  command = [] # ERROR: Empty command
  timeout = 30 # ERROR: Invalid timeout
}

top_level = 1 # ERROR: Unexpected attribute
