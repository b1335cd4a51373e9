package engine

// operation is what a command does with the graph: every walk is one of
// these, and the journal, the output and the steps see which (as
// Terraform's walkOperation does).
type operation int

const (
	opPlan     operation = iota // observe read-only; no journal
	opApply                     // begin a run (or carry a partly applied one further)
	opResume                    // continue the run the journal records
	opRollback                  // undo the run's steps in reverse order
)

// String is the command's verb, as output names it.
func (op operation) String() string {
	switch op {
	case opPlan:
		return "plan"
	case opApply:
		return "apply"
	case opResume:
		return "resume"
	case opRollback:
		return "rollback"
	}
	return "unknown operation"
}
