package autobuy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// recipeFake seeds the recipe: chat messages paid by plan credits only, plan
// purchases by the wallet only, and a customer whose plan is used up.
func recipeFake(walletMC int64) *quotastacktest.Server {
	srv := quotastacktest.NewServer()
	_ = srv.SeedRecipe()
	_, _ = srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: walletMC})
	return srv
}

func ExampleGatekeeper_Gate() {
	srv := recipeFake(250_000)
	defer srv.Close()

	gate, err := autobuy.New(srv.Client(), autobuy.WithPlan(plan.Plan{
		Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour,
	}))
	if err != nil {
		panic(err)
	}
	d, err := gate.Gate(context.Background(), quotastack.ExternalID("user42:companion7"), "chat_message",
		autobuy.WithEventID("msg_abc123"))
	if err != nil {
		panic(err) // QuotaStack unreachable: the default fallback policy returns the error
	}
	fmt.Println(d.Allowed, d.Reason, d.Purchase.Trigger)
	// Output: true auto_bought auto_buy
}

func ExampleMiddleware() {
	srv := recipeFake(20_000) // can't pay for a plan
	defer srv.Close()
	gate, _ := autobuy.New(srv.Client(), autobuy.WithPlan(plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}))

	chat := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "sent") })
	h := autobuy.Middleware(gate, func(r *http.Request) (autobuy.Action, error) {
		return autobuy.Action{Customer: quotastack.ExternalID(r.Header.Get("X-User")), Metric: "chat_message",
			EventID: r.Header.Get("X-Message-Id")}, nil
	})(chat)

	req := httptest.NewRequest(http.MethodPost, "/chat", nil)
	req.Header.Set("X-User", "user42:companion7")
	req.Header.Set("X-Message-Id", "msg_1")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	fmt.Print(rec.Code, " ", rec.Body.String())
	// Output: 402 {"allowed":false,"reason":"empty_wallet","show":"paywall"}
}
