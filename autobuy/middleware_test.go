package autobuy_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// chatAction reads the customer from X-User, the message id from X-Msg and
// the units from X-Units.
func chatAction(r *http.Request) (autobuy.Action, error) {
	user := r.Header.Get("X-User")
	if user == "" {
		return autobuy.Action{}, errors.New("missing X-User header")
	}
	units, _ := strconv.ParseInt(r.Header.Get("X-Units"), 10, 64)
	return autobuy.Action{Customer: quotastack.ExternalID(user), Metric: "chat_message", Units: units,
		EventID: r.Header.Get("X-Msg")}, nil
}

func serve(h http.Handler, user, msg string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/chat", nil)
	if user != "" {
		req.Header.Set("X-User", user)
	}
	req.Header.Set("X-Msg", msg)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func denialOf(t *testing.T, rec *httptest.ResponseRecorder) autobuy.Denial {
	t.Helper()
	var d autobuy.Denial
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &d), rec.Body.String())
	return d
}

func TestMiddlewareTwoPhaseChargesOnlyForWorkDone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler http.HandlerFunc
		charged bool
		panics  bool
	}{
		{"200", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "sent") }, true, false},
		{"no body, implicit 200", func(http.ResponseWriter, *http.Request) {}, true, false},
		{"201", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusCreated) }, true, false},
		{"399", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(399) }, true, false},
		{"400", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadRequest) }, false, false},
		{"500 after a body", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, "model failed")
		}, false, false},
		{"streamed", func(w http.ResponseWriter, _ *http.Request) {
			f, ok := w.(http.Flusher)
			require.True(t, ok, "a streaming handler can flush")
			_, _ = io.WriteString(w, "data: hi\n\n")
			f.Flush()
		}, true, false},
		{"panic", func(http.ResponseWriter, *http.Request) { panic("model crashed") }, false, true},
		{"abort", func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 0)
			w.grantPlanCredits(t, 5_000)
			var mu sync.Mutex
			var settled []string
			var sawHold bool
			h := autobuy.Middleware(w.gate(t), chatAction, autobuy.TwoPhase(time.Minute),
				autobuy.OnSettle(func(_ *http.Request, d autobuy.Decision, committed bool, err error) {
					mu.Lock()
					defer mu.Unlock()
					assert.NoError(t, err)
					assert.NotNil(t, d.Hold)
					settled = append(settled, strconv.FormatBool(committed))
				}))(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				d, ok := autobuy.DecisionFrom(r.Context())
				sawHold = ok && d.Allowed && d.Hold != nil
				// While the handler runs the credits are held, not debited.
				assert.Empty(t, w.usageFor("chat_message"))
				tt.handler(rw, r)
			}))
			if tt.panics {
				assert.Panics(t, func() { serve(h, user, "msg_1") }, "the handler's panic goes on")
			} else {
				serve(h, user, "msg_1")
			}
			assert.True(t, sawHold)
			assert.Equal(t, []string{strconv.FormatBool(tt.charged)}, settled)
			usage := w.usageFor("chat_message")
			bal, _ := w.srv.Account(user)
			if tt.charged {
				assert.Len(t, usage, 1)
				assert.Equal(t, int64(4_000), bal.Balance)
			} else {
				assert.Empty(t, usage)
				assert.Equal(t, int64(5_000), bal.Balance)
			}
			assert.Zero(t, bal.ReservedBalance, "no hold is left behind")
		})
	}
}

func TestMiddlewareTwoPhaseSettlesAfterTheClientLeft(t *testing.T) {
	t.Parallel()
	w := setup(t, 0)
	w.grantPlanCredits(t, 5_000)
	ctx, cancel := context.WithCancel(context.Background())
	h := autobuy.Middleware(w.gate(t), chatAction, autobuy.TwoPhase(0))(http.HandlerFunc(
		func(rw http.ResponseWriter, _ *http.Request) {
			cancel() // the client disconnects while the handler works
			rw.WriteHeader(http.StatusGatewayTimeout)
		}))
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/chat", nil)
	req.Header.Set("X-User", user)
	h.ServeHTTP(httptest.NewRecorder(), req)
	acct, _ := w.srv.Account(user)
	assert.Zero(t, acct.ReservedBalance, "released on a context that outlives the request")
}

type statusErr struct{ code int }

func (e statusErr) Error() string   { return "sign in first" }
func (e statusErr) HTTPStatus() int { return e.code }

func TestMiddlewareAnswers(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "sent") })
	tests := []struct {
		name       string
		wallet     int64
		prepare    func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc)
		status     int
		body       autobuy.Denial
		retryAfter string
	}{
		{name: "entitled", wallet: 250_000, status: 200},
		{name: "empty wallet", wallet: 20_000, status: 402,
			body: autobuy.Denial{Reason: autobuy.ReasonEmptyWallet, Show: "paywall"}},
		{name: "auto-buy off", wallet: 250_000, status: 402,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				return w.gate(t, autobuy.WithPreference(func(context.Context, autobuy.CustomerRef) (bool, error) { return false, nil })), chatAction
			},
			body: autobuy.Denial{Reason: autobuy.ReasonPlanExpired, Show: "plan_picker"}},
		{name: "unknown customer", wallet: 250_000, status: 402,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				return w.gate(t), func(r *http.Request) (autobuy.Action, error) {
					a, err := chatAction(r)
					a.Customer = quotastack.ExternalID("nobody")
					return a, err
				}
			},
			body: autobuy.Denial{Reason: autobuy.ReasonNoAccount, Show: "paywall"}},
		{name: "fail closed during an outage", wallet: 250_000, status: 503, retryAfter: "1",
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				w.srv.InjectFault(quotastacktest.Fault{Status: 503, RetryAfter: "1", Count: 100})
				return w.gate(t, autobuy.WithFallback(autobuy.FailClosed)), chatAction
			},
			body: autobuy.Denial{Reason: autobuy.ReasonUnavailable, Show: "retry"}},
		{name: "return error during an outage", wallet: 250_000, status: 503,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				w.srv.InjectFault(quotastacktest.Fault{Status: 500, Count: 100})
				return w.gate(t), chatAction
			},
			body: autobuy.Denial{Show: "retry", Error: "billing_unavailable"}},
		{name: "fail open during an outage", wallet: 250_000, status: 200,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				w.srv.InjectFault(quotastacktest.Fault{Drop: true, Count: 100})
				return w.gate(t, autobuy.WithFallback(autobuy.FailOpen)), chatAction
			}},
		{name: "rejected API key", wallet: 250_000, status: 500,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				c, err := quotastack.NewClient("qs_test_wrong", quotastack.WithBaseURL(w.srv.URL))
				require.NoError(t, err)
				g, err := autobuy.New(c, autobuy.WithPlan(hourPlan))
				require.NoError(t, err)
				return g, chatAction
			},
			body: autobuy.Denial{Show: "error", Error: "billing_misconfigured"}},
		{name: "metric without a rule", wallet: 250_000, status: 500,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				return w.gate(t), func(r *http.Request) (autobuy.Action, error) {
					a, err := chatAction(r)
					a.Metric = "no_such_metric"
					return a, err
				}
			},
			body: autobuy.Denial{Show: "error", Error: "billing_misconfigured"}},
		{name: "event id reused for another action", wallet: 250_000, status: 409,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				g := w.gate(t)
				_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("msg_1"), autobuy.WithUnits(3))
				require.NoError(t, err)
				return g, chatAction
			},
			body: autobuy.Denial{Show: "error", Error: "conflict"}},
		{name: "action error", wallet: 250_000, status: 400,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				return w.gate(t), func(*http.Request) (autobuy.Action, error) {
					return autobuy.Action{}, errors.New("missing X-User header")
				}
			},
			body: autobuy.Denial{Show: "error", Error: "bad_request", Detail: "missing X-User header"}},
		{name: "action error with a status", wallet: 250_000, status: 401,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				return w.gate(t), func(*http.Request) (autobuy.Action, error) { return autobuy.Action{}, statusErr{401} }
			},
			body: autobuy.Denial{Show: "error", Error: "bad_request", Detail: "sign in first"}},
		{name: "invalid action", wallet: 250_000, status: 400,
			prepare: func(t *testing.T, w *world) (*autobuy.Gatekeeper, autobuy.ActionFunc) {
				return w.gate(t), func(*http.Request) (autobuy.Action, error) { return autobuy.Action{Metric: "chat_message"}, nil }
			},
			body: autobuy.Denial{Show: "error", Error: "bad_request"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, tt.wallet)
			g, action := w.gate(t), autobuy.ActionFunc(chatAction)
			if tt.prepare != nil {
				g, action = tt.prepare(t, w)
			}
			rec := serve(autobuy.Middleware(g, action)(ok), user, "msg_1")
			require.Equal(t, tt.status, rec.Code, rec.Body.String())
			assert.Equal(t, tt.retryAfter, rec.Header().Get("Retry-After"))
			if tt.status == 200 {
				assert.Equal(t, "sent", rec.Body.String())
				return
			}
			assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
			assert.Equal(t, tt.body, denialOf(t, rec))
			assert.NotContains(t, rec.Body.String(), w.srv.APIKey)
		})
	}
}

func TestMiddlewareOnRefusalShapesTheBody(t *testing.T) {
	t.Parallel()
	w := setup(t, 20_000)
	var got autobuy.Refusal
	h := autobuy.Middleware(w.gate(t), chatAction, autobuy.OnRefusal(func(rw http.ResponseWriter, _ *http.Request, ref autobuy.Refusal) {
		got = ref
		rw.Header().Set("Content-Type", "text/plain")
		rw.WriteHeader(ref.Status)
		_, _ = io.WriteString(rw, "Top up your wallet to keep chatting ("+string(ref.Decision.Reason)+")")
	}))(http.NotFoundHandler())
	rec := serve(h, user, "msg_1")
	assert.Equal(t, 402, rec.Code)
	assert.Equal(t, "Top up your wallet to keep chatting (empty_wallet)", rec.Body.String())
	assert.Equal(t, autobuy.ReasonEmptyWallet, got.Decision.Reason)
	assert.NoError(t, got.Err)
	assert.Equal(t, autobuy.Denial{Reason: autobuy.ReasonEmptyWallet, Show: "paywall"}, got.Body)

	rec = serve(h, "", "msg_2")
	assert.Equal(t, 400, rec.Code)
	assert.EqualError(t, got.Err, "missing X-User header")
}
