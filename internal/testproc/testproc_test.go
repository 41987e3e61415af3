package testproc

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStartAndKill(t *testing.T) {
	p, err := Start(exec.Command("sleep", "60"))
	require.NoError(t, err)
	select {
	case <-p.Done:
		t.Fatal("exited at once")
	default:
	}
	p.Kill()
	require.Error(t, p.Err, "killed by a signal")

	_, err = Start(exec.Command("/nonexistent/binary"))
	require.Error(t, err)
}
