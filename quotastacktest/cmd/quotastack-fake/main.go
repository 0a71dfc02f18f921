// Command quotastack-fake serves an in-memory QuotaStack (package quotastacktest) on a port,
// so the cookbook's curl commands can be tried by hand:
//
//	go run ./quotastacktest/cmd/quotastack-fake -addr 127.0.0.1:8787
//
// By default it seeds the auto-buy recipe's world and starts its clock at the recipe's time,
// so the recipe's plan grant (expires_at 2026-04-13T14:00:00Z) is live. It serves until
// interrupted.
//
// -mode picks the less kind behaviours of quotastacktest.Modes, comma-separated:
//
//	go run ./quotastacktest/cmd/quotastack-fake -mode usage202,sparse
//
// usage202 (POST /v1/usage answers 202 with no body; -async-lag delays the debit on the
// server clock), sparse (no lifetime_earned, version, created_at, subscription_status),
// execute-then-5xx (every POST executes, then answers -execute-then-status), rate-limited
// (100 requests per 60 s).
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// recipeNow is the instant the recipe's plan purchase happens (its grant expires an hour later).
const recipeNow = "2026-04-13T13:00:00Z"

// shiftedClock runs at wall-clock speed from a chosen start.
type shiftedClock struct{ offset time.Duration }

func (c shiftedClock) Now() time.Time { return time.Now().Add(c.offset).UTC() }

func main() {
	addr := flag.String("addr", "127.0.0.1:8787", "address to listen on")
	key := flag.String("key", "qs_test_fake_local", "the API key to accept in X-API-Key")
	seed := flag.Bool("seed-recipe", true, "seed the auto-buy-from-wallet recipe's metrics, rules and customer")
	start := flag.String("now", recipeNow, "start the server clock at this RFC 3339 time (it then runs in real time); empty for the wall clock")
	asc := flag.Bool("burn-asc", false, "use the alternative burn order (priority ASC)")
	modes := flag.String("mode", "kind", "comma-separated modes: "+strings.Join(modeNames(), ", "))
	lag := flag.Duration("async-lag", 0, "usage202: execute an accepted usage event this long after acceptance (0: at the next request)")
	execStatus := flag.Int("execute-then-status", 500, "execute-then-5xx: the status answered after executing")
	flag.Parse()

	modeOpts, err := modeOptions(*modes, *lag, *execStatus)
	if err != nil {
		log.Fatalf("-mode: %v", err)
	}
	opts := []quotastacktest.Option{quotastacktest.WithAddr(*addr), quotastacktest.WithAPIKey(*key)}
	if *start != "" {
		t, err := time.Parse(time.RFC3339, *start)
		if err != nil {
			log.Fatalf("-now: %v", err)
		}
		opts = append(opts, quotastacktest.WithClock(shiftedClock{offset: time.Until(t)}.Now))
	}
	if *asc {
		opts = append(opts, quotastacktest.WithBurnOrder(quotastacktest.BurnOrderPriorityAsc))
	}
	opts = append(opts, modeOpts...)
	srv, err := listen(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "quotastack-fake:", err)
		os.Exit(1)
	}
	defer srv.Close()
	if *seed {
		if err := seedRecipe(srv); err != nil {
			log.Fatalf("seed: %v", err)
		}
	}

	banner(os.Stdout, srv, *modes)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}

// banner prints where the fake listens and the environment variables the
// SDK reads (quotastack.NewClientFromEnv), as lines to paste into a shell.
func banner(w io.Writer, srv *quotastacktest.Server, modes string) {
	var b strings.Builder
	fmt.Fprintf(&b, "quotastack-fake listening on %s (clock %s, modes %s)\n\n", srv.URL, srv.Now().Format(time.RFC3339), modes)
	b.WriteString("Paste these into the shell that runs your program (quotastack.NewClientFromEnv reads them):\n\n")
	fmt.Fprintf(&b, "export %s=%s\nexport %s=%s\n\n", quotastack.EnvAPIKey, srv.APIKey, quotastack.EnvBaseURL, srv.URL)
	fmt.Fprintf(&b, "Then try: curl -s -H \"X-API-Key: $%s\" \"$%s/v1/customer-by-external-id/user42%%3Acompanion7/entitlements/chat_message\"\n",
		quotastack.EnvAPIKey, quotastack.EnvBaseURL)
	b.WriteString("(external ids go under /v1/customer-by-external-id/, path-escaped; Ctrl-C stops)\n")
	_, _ = io.WriteString(w, b.String())
}

// listen starts the server; NewServer panics when it can't listen (a port
// taken, an address that doesn't parse), which becomes a one-line error here.
func listen(opts []quotastacktest.Option) (srv *quotastacktest.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return quotastacktest.NewServer(opts...), nil
}

// seedRecipe creates the recipe's world: chat messages paid by plan credits only, plan
// purchases paid by the wallet only, and user42:companion7 with a 500,000 mc wallet.
func seedRecipe(srv *quotastacktest.Server) error {
	if err := srv.SeedRecipe(); err != nil {
		return err
	}
	_, err := srv.Grant("user42:companion7", quotastacktest.BlockSpec{
		Credits: 500_000, Metadata: map[string]string{"source": "wallet_recharge"},
	})
	return err
}

func modeNames() []string {
	var names []string
	for _, m := range quotastacktest.Modes() {
		names = append(names, m.Name)
	}
	return names
}

// modeOptions turns the -mode list into server options; lag and execStatus refine usage202
// and execute-then-5xx.
func modeOptions(list string, lag time.Duration, execStatus int) ([]quotastacktest.Option, error) {
	var opts []quotastacktest.Option
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		m, ok := quotastacktest.ModeNamed(name)
		if !ok {
			return nil, fmt.Errorf("unknown mode %q (known: %s)", name, strings.Join(modeNames(), ", "))
		}
		switch name {
		case "usage202":
			opts = append(opts, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{Defer: true, Lag: lag}))
		case "execute-then-5xx":
			if execStatus < 500 || execStatus > 599 {
				return nil, fmt.Errorf("-execute-then-status %d: want a 5xx", execStatus)
			}
			opts = append(opts, quotastacktest.WithExecuteThenStatus(execStatus))
		default:
			opts = append(opts, m.Options...)
		}
	}
	return opts, nil
}
