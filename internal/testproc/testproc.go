// Package testproc starts the servers tests run (redis-server, CrowdSec)
// so that they die with the test binary, however it ends.
package testproc

import (
	"os/exec"
	"runtime"
	"syscall"
)

// Process is a started command and the goroutine waiting for it.
type Process struct {
	Cmd  *exec.Cmd
	Done chan struct{} // closed when the process has exited
	Err  error         // cmd.Wait's result, valid after Done
}

// Start starts cmd from a goroutine locked to its OS thread and keeps that
// thread until the process exits. Pdeathsig fires when the creating thread
// dies, not the process, so the thread must live as long as the child:
// then a test binary that dies (a panic, go test's -timeout) takes its
// servers with it instead of leaving them running. It sets
// cmd.SysProcAttr.Pdeathsig, creating SysProcAttr if needed.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// SIGKILL: the child cannot ignore it.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p := &Process{Cmd: cmd, Done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.Err = cmd.Wait()
		close(p.Done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// Kill sends SIGKILL and waits for the exit.
func (p *Process) Kill() {
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.Done
}
