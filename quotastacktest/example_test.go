package quotastacktest_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// A fake QuotaStack for a test or an example: seed it directly, talk to it
// through the SDK, break it on purpose, then check its ledger. In a test,
// quotastacktest.Start(t) closes it when the test ends.
func Example() {
	srv := quotastacktest.NewServer()
	defer srv.Close()
	if err := srv.SeedRecipe(); err != nil { // chat_message from plan credits, plan_purchase_1hr from the wallet
		panic(err)
	}
	exp := srv.Now().Add(time.Hour)
	if _, err := srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 5_000, Priority: 10, ExpiresAt: &exp}); err != nil {
		panic(err)
	}
	client := srv.Client(quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond))
	ctx := context.Background()
	alice := quotastack.ExternalID("user42:companion7")

	// The next usage record executes, then its connection drops: the client
	// retries with the same key and the server replays the first answer.
	srv.DropNext(1, "POST", "/v1/usage")
	ev, err := client.Record(ctx, quotastack.UsageParams{Customer: alice, MetricKey: "chat_message", Units: 1},
		quotastack.WithIdempotencyKey("usage:msg_1"))
	if err != nil {
		panic(err)
	}
	fmt.Println("attempts:", ev.Meta.Attempts, "replayed:", ev.Meta.Replayed, "cost:", ev.Cost)

	// QuotaStack down for longer than the client retries.
	srv.InjectFault(quotastacktest.Fault{Method: "GET", Status: 503, Count: 10})
	_, err = client.Balance(ctx, alice)
	fmt.Println("503s:", errors.Is(err, quotastack.ErrServer))
	srv.ClearFaults()

	fmt.Println("usage events:", len(srv.UsageEvents("user42:companion7")))
	fmt.Println("invariants:", srv.CheckInvariants())
	// Output:
	// attempts: 2 replayed: true cost: 1000
	// 503s: true
	// usage events: 1
	// invariants: <nil>
}

// A manual clock moves the fake's time: here past a plan's expiry.
func ExampleNewManualClock() {
	clock := quotastacktest.NewManualClock(time.Date(2026, 4, 13, 13, 0, 0, 0, time.UTC))
	srv := quotastacktest.NewServer(quotastacktest.WithClock(clock.Now))
	defer srv.Close()
	exp := clock.Now().Add(time.Hour)
	_, _ = srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 50_000, Priority: 10, ExpiresAt: &exp})

	acct, _ := srv.Account("user42:companion7")
	fmt.Println(acct.Balance)
	clock.Advance(2 * time.Hour)
	acct, _ = srv.Account("user42:companion7")
	fmt.Println(acct.Balance)
	// Output:
	// 50000
	// 0
}
