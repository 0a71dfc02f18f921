// Command quotastack-fake serves an in-memory QuotaStack (package quotastacktest) on a port,
// so the cookbook's curl commands can be tried by hand:
//
//	go run ./quotastacktest/cmd/quotastack-fake -addr 127.0.0.1:8787
//
// By default it seeds the auto-buy recipe's world and starts its clock at the recipe's time,
// so the recipe's plan grant (expires_at 2026-04-13T14:00:00Z) is live. It serves until
// interrupted.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

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
	flag.Parse()

	opts := []quotastacktest.Option{quotastacktest.WithAddr(*addr), quotastacktest.WithAPIKey(*key)}
	if *start != "" {
		t, err := time.Parse(time.RFC3339, *start)
		if err != nil {
			log.Fatalf("-now: %v", err)
		}
		opts = append(opts, quotastacktest.WithClock(shiftedClock{offset: time.Until(t)}))
	}
	if *asc {
		opts = append(opts, quotastacktest.WithBurnOrder(quotastacktest.BurnOrderPriorityAsc))
	}
	srv := quotastacktest.NewServer(opts...)
	defer srv.Close()
	if *seed {
		if err := seedRecipe(srv); err != nil {
			log.Fatalf("seed: %v", err)
		}
	}

	fmt.Printf("quotastack-fake listening on %s\n", srv.URL)
	fmt.Printf("API key: %s\n", srv.APIKey)
	fmt.Printf("clock:   %s\n\n", srv.Now().Format(time.RFC3339))
	fmt.Printf("Try:\n  export API_KEY=%s\n  curl -s -H \"X-API-Key: $API_KEY\" \\\n    \"%s/v1/customer-by-external-id/user42%%3Acompanion7/entitlements/chat_message\"\n\n", srv.APIKey, srv.URL)
	fmt.Println("(external ids go under /v1/customer-by-external-id/; Ctrl-C stops)")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}

// seedRecipe creates the recipe's world: chat messages paid by plan credits only, plan
// purchases paid by the wallet only, and user42:companion7 with a 500,000 mc wallet.
func seedRecipe(srv *quotastacktest.Server) error {
	if err := srv.SeedRecipe(); err != nil {
		return err
	}
	_, err := srv.Grant("user42:companion7", quotastacktest.Grant{
		Credits: 500_000, Metadata: map[string]string{"source": "wallet_recharge"},
	})
	return err
}
