package main

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPortTakenIsOneLine runs the command on a port already in use: it must
// exit 1 with one line on stderr, not a panic with a goroutine trace.
func TestPortTakenIsOneLine(t *testing.T) {
	if os.Getenv("QUOTASTACK_FAKE_MAIN") == "1" {
		os.Args = []string{"quotastack-fake", "-addr", os.Getenv("QUOTASTACK_FAKE_ADDR")}
		main()
		return
	}
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()

	cmd := exec.Command(os.Args[0], "-test.run", "^TestPortTakenIsOneLine$")
	cmd.Env = append(os.Environ(), "QUOTASTACK_FAKE_MAIN=1", "QUOTASTACK_FAKE_ADDR="+l.Addr().String())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 1, exit.ExitCode())
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	require.Len(t, lines, 1, stderr.String())
	assert.Contains(t, lines[0], "quotastack-fake: quotastacktest: listen on "+l.Addr().String())
	assert.NotContains(t, stderr.String(), "goroutine")
}
