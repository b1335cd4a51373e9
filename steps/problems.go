package steps

import "fmt"

// Problems: entries of a key store reported by name, with why (not a key,
// does not parse, a name the Key Manager refuses).

// describeProblems renders each problem as "NAME (REASON)".
func describeProblems(ps []problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fmt.Sprintf("%s (%s)", p.Name, p.Reason)
	}
	return out
}

// problemNames returns the problems' names.
func problemNames(ps []problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return out
}
