package autobuy

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/quotastack/quotastack-go"
)

// Action is what a request wants to do: who pays, on which metric, how many
// units, and (optionally) the business event id that makes its usage record
// idempotent.
type Action struct {
	Customer quotastack.Customer
	Metric   string
	Units    int64  // 0 means 1
	EventID  string // e.g. the message id; "" = a new event per request
}

// ActionFunc extracts the Action from a request. An error answers 400.
type ActionFunc func(r *http.Request) (Action, error)

type decisionKey struct{}

// DecisionFrom returns the Decision the middleware made for this request.
func DecisionFrom(ctx context.Context) (Decision, bool) {
	d, ok := ctx.Value(decisionKey{}).(Decision)
	return d, ok
}

// Denial is the JSON body of a denied request.
type Denial struct {
	Allowed bool   `json:"allowed"`
	Reason  Reason `json:"reason"`
	// Show tells the front end what to show: "paywall" (wallet can't pay),
	// "plan_picker" (auto-buy off), or "retry".
	Show string `json:"show"`
}

// Middleware gates every request through g before next runs. An allowed
// request reaches next with the Decision in its context (DecisionFrom). A
// denied one gets 402 with a Denial body; an unreachable QuotaStack (with the
// ReturnError policy, or FailClosed) gets 503; a bad Action gets 400.
func Middleware(g *Gatekeeper, action ActionFunc) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a, err := action(r)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request"})
				return
			}
			opts := []GateOption{}
			if a.Units > 0 {
				opts = append(opts, WithUnits(a.Units))
			}
			if a.EventID != "" {
				opts = append(opts, WithEventID(a.EventID))
			}
			d, err := g.Gate(r.Context(), a.Customer, a.Metric, opts...)
			if err != nil || (d.Fallback && !d.Allowed) {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "billing unavailable"})
				return
			}
			if !d.Allowed {
				writeJSON(w, http.StatusPaymentRequired, Denial{Allowed: false, Reason: d.Reason, Show: show(d.Reason)})
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), decisionKey{}, d)))
		})
	}
}

func show(r Reason) string {
	switch r {
	case ReasonEmptyWallet:
		return "paywall"
	case ReasonPlanExpired:
		return "plan_picker"
	}
	return "retry"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
