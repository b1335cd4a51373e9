//go:build linux

package testenv

import "syscall"

// sysProcAttr makes the kernel kill a server when the test process dies, so
// that a crashed or killed test never leaves servers behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
