// Package initgc stops the garbage collector while the program's packages
// initialise, for its side effect, and Restore gives it back. The
// libraries linked for every key store KES can use (kesconf), and the
// object store's and Kubernetes' clients, build tables at init that stay
// live (about 9 MB, GODEBUG=inittrace=1): with the collector on, the heap
// passes its first goals (4, 6, 9 MB) during init and three cycles mark
// what no one frees (GODEBUG=gctrace=1). `runbook version` on this VM, 30
// runs each: 81 ms wall and 103 ms CPU at best with the default, 69 ms and
// 94 ms with GOGC=off. Packages initialise in import-path order as their
// imports allow, so this one runs after the first cycle; the other two
// go. Import it from a main package only, and call Restore first thing in
// main (and in a test binary's TestMain).
package initgc

import "runtime/debug"

// percent is the collector's setting before init stopped it: GOGC's, or
// 100 by default (a GOGC=off is kept off).
var percent = debug.SetGCPercent(-1)

// Restore sets the collector back to what GOGC asked for. Calling it
// again changes nothing.
func Restore() { debug.SetGCPercent(percent) }
