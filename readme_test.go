package quotastack_test

import (
	"bufio"
	"bytes"
	"context"
	"go/format"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
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

// readmeShell returns the sh blocks of README.md marked
// "<!-- readme-test: NAME -->", by name.
func readmeShell(t *testing.T) map[string]string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	re := regexp.MustCompile("(?s)<!-- readme-test: (\\S+) -->\n```sh\n(.*?)\n```\n")
	out := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(readme), -1) {
		out[m[1]] = m[2] + "\n"
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

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	_, port, err := net.SplitHostPort(l.Addr().String())
	require.NoError(t, err)
	return port
}

// startFake runs the fake's binary until the test ends and returns the
// export lines of its banner.
func startFake(ctx context.Context, t *testing.T, bin string, args []string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, args...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var exports strings.Builder
	sc := bufio.NewScanner(stdout)
	for n := 0; n < 2 && sc.Scan(); {
		if line := sc.Text(); strings.HasPrefix(line, "export ") {
			exports.WriteString(line + "\n")
			n++
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return exports.String()
}

// bash runs script as a user pastes it into a shell in dir, with no
// QuotaStack variables of its own and hermetic Go builds (GOPROXY=off: every
// module from this checkout's module cache), and returns its stdout.
func bash(ctx context.Context, t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QUOTASTACK_") && !strings.HasPrefix(kv, "GOFLAGS=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOSUMDB=off")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "%s\n%s", script, stderr.String())
	return stdout.String()
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
		sh := readmeShell(t)
		for _, name := range []string{"fake-sh", "fake-banner", "quickstart-module-sh", "quickstart-run-sh"} {
			require.Contains(t, sh, name)
		}
		root, err := filepath.Abs(".")
		require.NoError(t, err)
		work := t.TempDir()

		// 1. The fake, started as the README says, on a free port instead of 8787.
		fields := strings.Fields(sh["fake-sh"])
		require.GreaterOrEqual(t, len(fields), 3)
		require.Equal(t, []string{"go", "run"}, fields[:2], "the README starts the fake with go run")
		fakeBin := filepath.Join(work, "quotastack-fake")
		out, err := goCmd(ctx, root, os.Environ(), "build", "-o", fakeBin, fields[2]).CombinedOutput()
		require.NoError(t, err, "%s", out)
		port := freePort(t)
		exports := startFake(ctx, t, fakeBin, append(fields[3:], "-addr", "127.0.0.1:"+port))
		assert.Equal(t, strings.ReplaceAll(sh["fake-banner"], "127.0.0.1:8787", "127.0.0.1:"+port), exports,
			"the README prints the export lines the fake prints")

		// 2-4. A module next to the clone, main.go, the pasted export lines, the run.
		require.NoError(t, os.Symlink(root, filepath.Join(work, "quotastack-go")))
		bash(ctx, t, work, sh["quickstart-module-sh"])
		chat := filepath.Join(work, "chat")
		require.NoError(t, os.WriteFile(filepath.Join(chat, blocks["quickstart"][0]), []byte(blocks["quickstart"][1]), 0o600))
		assert.Equal(t, "allowed: auto_bought\n", bash(ctx, t, chat, exports+sh["quickstart-run-sh"]))
		assert.Equal(t, "allowed: entitled\n", bash(ctx, t, chat, exports+"go run .\n"),
			"a rerun replays msg_001's usage: charged once")
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

// The README's table of reasons says what the code does: Reason.Show,
// Reason.HTTPStatus, Reason.Final, and the Paywall hook on the 402 denials.
func TestREADMEReasons(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, table, ok := strings.Cut(string(readme), "<!-- readme-test: reasons -->\n")
	require.True(t, ok)
	table, _, _ = strings.Cut(table, "\n\n")
	seen := map[autobuy.Reason]bool{}
	cell := func(s string) string { return strings.Trim(strings.TrimSpace(s), "`") }
	for _, line := range strings.Split(table, "\n")[2:] {
		cols := strings.Split(line, "|")
		require.Len(t, cols, 9, line)
		r := autobuy.Reason(cell(cols[1]))
		seen[r] = true
		assert.Equal(t, r.Show(), cell(cols[3]), "%s: show", r)
		status := 0
		if c := cell(cols[4]); c != "" {
			status, err = strconv.Atoi(c)
			require.NoError(t, err, line)
		}
		assert.Equal(t, r.HTTPStatus(), status, "%s: HTTP status", r)
		if allowed := cell(cols[2]); allowed != "yes" {
			assert.Equal(t, map[string]bool{"yes": true, "no": false}[cell(cols[5])], r.Final(), "%s: final", r)
		}
		assert.Equal(t, status == 402, cell(cols[6]) == "Paywall", "%s: the Paywall hook fires on the 402 denials", r)
	}
	for _, r := range []autobuy.Reason{
		autobuy.ReasonEntitled, autobuy.ReasonAutoBought, autobuy.ReasonPlanExpired, autobuy.ReasonEmptyWallet,
		autobuy.ReasonEntitlementFailedAfterPurchase, autobuy.ReasonInsufficientCredits, autobuy.ReasonActionTooLarge,
		autobuy.ReasonNoAccount, autobuy.ReasonPurchaseLimit, autobuy.ReasonAutoBuySuspended,
		autobuy.ReasonPurchaseUnavailable, autobuy.ReasonPurchaseInReview, autobuy.ReasonUnavailable,
	} {
		assert.True(t, seen[r], "the README's table lacks %s", r)
	}
}

// The README and the Gate godoc give the same round trips.
func TestREADMERoundTrips(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	src, err := os.ReadFile(filepath.Join("autobuy", "gate.go"))
	require.NoError(t, err)
	godoc := strings.ReplaceAll(string(src), "\n// ", " ")
	pick := func(text string, patterns map[string]string) map[string]string {
		out := map[string]string{}
		for k, p := range patterns {
			m := regexp.MustCompile(p).FindStringSubmatch(text)
			require.NotNil(t, m, "%s: %s", k, p)
			out[k] = m[1]
		}
		return out
	}
	fromGodoc := pick(godoc, map[string]string{
		"entitled": `Round trips: (\d+) when entitled`, "record-first": `\((\d+) with WithRecordFirst\)`,
		"paywall": `(\d+) for a paywall`, "auto-buy": `(\d+) for an auto-buy`,
		"async auto-buy":        `\((\d+) on a server that debits asynchronously`,
		"record-first auto-buy": `(\d+) with WithRecordFirst, whose record`,
	})
	fromREADME := pick(string(readme), map[string]string{
		"entitled": `Round trips: (\d+) when entitled`, "record-first": `; (\d+) with record-first\)`,
		"paywall": `(\d+) for a paywall`, "auto-buy": `(\d+) for an auto-buy \(`,
		"async auto-buy":        `(\d+) for an auto-buy on a server that answers usage with .202 Accepted.`,
		"record-first auto-buy": `(\d+) with record-first, whose record`,
	})
	assert.Equal(t, fromGodoc, fromREADME)
}

// Every in-page link of the README and CONTRIBUTING.md names a heading, and
// every link to another of the repository's files names one that exists.
func TestREADMELinks(t *testing.T) {
	t.Parallel()
	slug := func(h string) string {
		h = strings.ToLower(strings.TrimSpace(h))
		var b strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				b.WriteByte('-')
			case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
				b.WriteRune(r)
			}
		}
		return b.String()
	}
	anchors := map[string]map[string]bool{}
	for _, f := range []string{"README.md", "CONTRIBUTING.md"} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		anchors[f] = map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(b), -1) {
			anchors[f][slug(m[1])] = true
		}
	}
	link := regexp.MustCompile(`\]\(([^)\s]*)\)`)
	for f := range anchors {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.HasPrefix(target, "http") {
				continue
			}
			file, frag, _ := strings.Cut(target, "#")
			if file == "" {
				file = f
			}
			_, err := os.Stat(file)
			require.NoError(t, err, "%s links to %s", f, target)
			if frag != "" {
				require.Contains(t, anchors, file, "%s links into %s", f, target)
				assert.True(t, anchors[file][frag], "%s links to %s: no such heading", f, target)
			}
		}
	}
}

// The README's first screen (its first 40 lines) has the two commands and
// the table of contents.
func TestREADMEFirstScreen(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	lines := strings.SplitN(string(readme), "\n", 41)
	first := strings.Join(lines[:40], "\n")
	for _, want := range []string{"go run ./examples/autobuy", "./scripts/test", "## Contents", "(#quickstart)", "(#production-checklist)"} {
		assert.Contains(t, first, want)
	}
}
