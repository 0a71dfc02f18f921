package quotastack_test

import (
	"bytes"
	"context"
	"go/format"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
)

// readmeBlocks returns the Go blocks of README.md marked
// "<!-- readme-test: NAME FILE -->", by name: the file name and the code.
func readmeBlocks(t *testing.T) map[string][2]string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	re := regexp.MustCompile("(?s)<!-- readme-test: (\\S+) (\\S+) -->\n```go\n(.*?)\n```\n")
	out := map[string][2]string{}
	for _, m := range re.FindAllStringSubmatch(string(readme), -1) {
		out[m[1]] = [2]string{m[2], m[3] + "\n"}
	}
	return out
}

// consumerModule writes a module that requires this checkout as a user's
// module would (by version, resolved through a replace to the checkout), with
// file holding code. Builds in it are hermetic: GOPROXY=off, GOWORK=off, and
// every dependency comes from the module cache this checkout's tests use.
func consumerModule(t *testing.T, file, code string) (dir string, env []string) {
	t.Helper()
	root, err := filepath.Abs(".")
	require.NoError(t, err)
	gomod, err := os.ReadFile("go.mod")
	require.NoError(t, err)
	gosum, err := os.ReadFile("go.sum")
	require.NoError(t, err)
	mod := strings.Replace(string(gomod), "module github.com/quotastack/quotastack-go", "module example.com/readme", 1) +
		"\nrequire github.com/quotastack/quotastack-go v0.0.0-readme\n" +
		"\nreplace github.com/quotastack/quotastack-go => " + root + "\n"
	dir = t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.sum"), gosum, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, file), []byte(code), 0o600))
	env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOSUMDB=off")
	return dir, env
}

func goCmd(ctx context.Context, dir string, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir, cmd.Env = dir, env
	return cmd
}

// TestREADME compiles and runs the README's quickstart and test snippet
// exactly as printed, so the two can't drift apart.
func TestREADME(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two programs with the go command")
	}
	t.Parallel()
	blocks := readmeBlocks(t)
	require.Contains(t, blocks, "quickstart")
	require.Contains(t, blocks, "testing")
	for name, b := range blocks {
		formatted, err := format.Source([]byte(b[1]))
		require.NoError(t, err, name)
		assert.Equal(t, string(formatted), b[1], "the README's %s block is not gofmt-ed", name)
	}

	t.Run("quickstart", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		srv := quotastacktest.Start(t) // an empty tenant: the quickstart sets it up
		_, err := srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 250_000,
			Metadata: map[string]string{"source": "wallet_recharge"}})
		require.NoError(t, err)
		dir, env := consumerModule(t, blocks["quickstart"][0], blocks["quickstart"][1])
		env = append(env, "QUOTASTACK_API_KEY="+srv.APIKey, "QUOTASTACK_BASE_URL="+srv.URL)

		bin := filepath.Join(dir, "quickstart")
		out, err := goCmd(ctx, dir, env, "build", "-o", bin, ".").CombinedOutput()
		require.NoError(t, err, "%s", out)
		run := func() string {
			cmd := exec.CommandContext(ctx, bin)
			cmd.Env = env
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			require.NoError(t, cmd.Run(), stderr.String())
			return stdout.String()
		}
		assert.Equal(t, "allowed: auto_bought\n", run())
		assert.Equal(t, "allowed: entitled\n", run(), "a rerun replays msg_001's usage: charged once")
		assert.Len(t, srv.UsageEvents("user42:companion7"), 2, "the plan's debit and msg_001")
		require.NoError(t, srv.CheckInvariants())
	})

	t.Run("testing", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		dir, env := consumerModule(t, blocks["testing"][0], blocks["testing"][1])
		out, err := goCmd(ctx, dir, env, "test", "-count=1", "-v", ".").CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Contains(t, string(out), "--- PASS: TestChat")
	})
}
