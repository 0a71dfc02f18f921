package autobuy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/internal/retry"
)

// Action is what a request wants to do: who pays, on which metric, how many
// units, and (optionally) the business event id that makes its usage record
// idempotent.
type Action struct {
	Customer quotastack.Customer
	Metric   string
	// Units is the action's size. 0 (the field's zero value) means 1, as for
	// a gate called without WithUnits; a negative count is refused 400, as
	// WithUnits(n) with n < 1 is an error.
	Units   int64
	EventID string // e.g. the message id; "" = a new event per request
	// Options are this request's own gate options (e.g. WithMetadata,
	// WithAutoBuy(false)). They are applied after the ones the middleware
	// makes from Units, EventID and TwoPhase, so they win over them.
	Options []GateOption
}

// ActionFunc extracts the Action from a request. An error is answered 400
// with the error's text as the body's detail (write it for the API's
// caller), or with the status of an error that has a method HTTPStatus() int.
//
// It may read the request body: the handler still gets the whole body (what
// the ActionFunc read is given back to it, then the unread rest). Closing the
// body in the ActionFunc does not close it for the handler. The bytes read
// are kept in memory until the handler reads them: bound the body
// (http.MaxBytesReader) before this middleware if it can be large.
type ActionFunc func(r *http.Request) (Action, error)

type decisionKey struct{}

// DecisionFrom returns the Decision the middleware made for this request.
func DecisionFrom(ctx context.Context) (Decision, bool) {
	d, ok := ctx.Value(decisionKey{}).(Decision)
	return d, ok
}

// Denial is the default JSON body of a request the middleware answers itself.
type Denial struct {
	Allowed bool `json:"allowed"`
	// Reason is the gate's reason; "" when the gate returned an error.
	Reason Reason `json:"reason,omitempty"`
	// Show tells the front end what to show: "paywall" (pay to go on),
	// "plan_picker" (choose a plan), "retry" (try again shortly),
	// "purchase_review" (support is checking the last purchase) or "error"
	// (nothing the user can do).
	Show string `json:"show"`
	// Error names an error class when there is no reason: "bad_request",
	// "billing_unavailable", "billing_misconfigured" or "conflict".
	Error string `json:"error,omitempty"`
	// Detail is the ActionFunc's error text on a bad request (never the
	// gate's errors, which are for logs).
	Detail string `json:"detail,omitempty"`
}

// Refusal is a request the middleware answers without running the handler.
type Refusal struct {
	Status     int           // the HTTP status the middleware chose (see Middleware)
	RetryAfter time.Duration // sent as Retry-After (whole seconds, at most MaxRetryAfter) when > 0
	Decision   Decision      // the gate's decision; zero when Err is set
	// Err is the ActionFunc's error (Status 400 or its HTTPStatus) or the
	// gate's error; nil for a denial.
	Err  error
	Body Denial // the default body
}

// MiddlewareOption configures Middleware.
type MiddlewareOption func(*middlewareConfig)

type middlewareConfig struct {
	gate       GateFunc
	twoPhase   bool
	holdTTL    time.Duration
	refuse     func(w http.ResponseWriter, r *http.Request, ref Refusal)
	onSettle   func(r *http.Request, d Decision, committed bool, err error)
	settleTime time.Duration
}

// TwoPhase holds the action's credits with a reservation (ttl 0 = server
// default) before the handler runs, commits them when the handler answers a
// status below 400, and releases them when it answers 400 or more or panics
// (the panic then goes on). A customer pays only for work done. The handler
// must finish within ttl, or the hold expires and the commit fails (see OnSettle).
func TwoPhase(ttl time.Duration) MiddlewareOption {
	return func(c *middlewareConfig) { c.twoPhase, c.holdTTL = true, ttl }
}

// SettleTimeout bounds how long the two-phase middleware keeps settling a
// hold QuotaStack could not answer (default quotastack.DefaultTimeout); the
// request's own context may be done by then. d <= 0 keeps the default.
func SettleTimeout(d time.Duration) MiddlewareOption {
	return func(c *middlewareConfig) {
		if d > 0 {
			c.settleTime = d
		}
	}
}

// GateFunc has the signature of Gatekeeper.Gate.
type GateFunc func(ctx context.Context, customer quotastack.Customer, metric string, opts ...GateOption) (Decision, error)

// GateWith makes the middleware gate through fn instead of calling the
// Gatekeeper's Gate directly, e.g. a tracing wrapper's Gate method
// (otelquotastack.GateTracer). fn must call the same Gatekeeper: two-phase
// holds are settled through its client.
func GateWith(fn GateFunc) MiddlewareOption { return func(c *middlewareConfig) { c.gate = fn } }

// OnRefusal replaces how a refused request is answered (the default writes
// ref.Status, Retry-After and ref.Body as JSON). Use it to shape the 402/503
// bodies of your API, or to log ref.Err.
func OnRefusal(fn func(w http.ResponseWriter, r *http.Request, ref Refusal)) MiddlewareOption {
	return func(c *middlewareConfig) { c.refuse = fn }
}

// OnSettle is called in two-phase mode after the hold of an allowed request
// was committed (committed true) or released, with the error of that call.
// A settle QuotaStack could not answer is retried until the settle time
// (SettleTimeout) runs out. A commit that still failed leaves the event's
// record committing: a retry of the event resends the same commit (charged
// once); without a retry the hold expires and the action was not charged.
func OnSettle(fn func(r *http.Request, d Decision, committed bool, err error)) MiddlewareOption {
	return func(c *middlewareConfig) { c.onSettle = fn }
}

// Middleware gates every request through g before next runs. An allowed
// request reaches next with the Decision in its context (DecisionFrom); by
// default its usage is recorded before next runs (see TwoPhase to charge only
// when next succeeds). Other requests are refused (see OnRefusal); a denial
// gets its reason's Reason.HTTPStatus and Reason.Show (one table, reasons.go):
//
//   - 402: denials the customer can lift by paying or choosing a plan (the
//     ones that fire Hooks.Paywall): empty_wallet, plan_expired,
//     purchase_limit, auto_buy_suspended, action_too_large, no_account (a
//     topup creates the account).
//   - 429 with Retry-After: denials worth retrying soon: insufficient_credits,
//     purchase_unavailable.
//   - 409: purchase_in_review (support is checking the last purchase).
//   - 503 (Retry-After when QuotaStack sent one, capped at MaxRetryAfter):
//     QuotaStack could not answer (quotastack.IsOutage: the unavailable
//     reason of a FailClosed gate, or the error of a ReturnError gate:
//     transport errors, timeouts, 5xx, 429 after retries, unreadable answers).
//   - 500: configuration errors: entitlement_failed_after_purchase, a
//     rejected API key, an unknown metric or a metric without a rule, and
//     any other 4xx QuotaStack answered (403, 405, 410, 413, ...).
//   - 409: the event id was used before for another action.
//   - 400: the ActionFunc's error (or its HTTPStatus), or an invalid Action.
func Middleware(g *Gatekeeper, action ActionFunc, opts ...MiddlewareOption) func(http.Handler) http.Handler {
	cfg := middlewareConfig{gate: g.Gate, refuse: writeRefusal, settleTime: quotastack.DefaultTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a, err := readAction(action, r)
			if err != nil {
				cfg.refuse(w, r, actionRefusal(err))
				return
			}
			gopts := make([]GateOption, 0, 3+len(a.Options))
			if a.Units != 0 { // 0 means 1; a negative count is the gate's input error (400)
				gopts = append(gopts, WithUnits(a.Units))
			}
			if a.EventID != "" {
				gopts = append(gopts, WithEventID(a.EventID))
			}
			if cfg.twoPhase {
				gopts = append(gopts, WithReservation(cfg.holdTTL))
			}
			gopts = append(gopts, a.Options...)
			d, err := cfg.gate(r.Context(), a.Customer, a.Metric, gopts...)
			if err != nil {
				cfg.refuse(w, r, errorRefusal(r.Context(), err))
				return
			}
			if !d.Allowed {
				cfg.refuse(w, r, denialRefusal(d))
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), decisionKey{}, d))
			if d.Hold == nil { // recorded already, or allowed by the FailOpen fallback
				next.ServeHTTP(w, r)
				return
			}
			serveHeld(w, r, next, g, d, cfg)
		})
	}
}

// serveHeld runs next and settles the hold: commit below 400, release at 400
// or above and on a panic (which then goes on).
func serveHeld(w http.ResponseWriter, r *http.Request, next http.Handler, g *Gatekeeper, d Decision, cfg middlewareConfig) {
	sw := &statusWriter{ResponseWriter: w}
	settled := false
	settle := func(commit bool) {
		settled = true
		// The request's context may be done (client gone): a hold left behind
		// would block the customer's credits until its TTL.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), cfg.settleTime)
		defer cancel()
		err := g.Settle(ctx, d, commit, 0)
		// QuotaStack could not answer: the work is done (or failed), so the
		// hold is settled again (Settle is idempotent) until the settle time
		// runs out, rather than left to expire uncharged.
		for wait := 50 * time.Millisecond; err != nil && quotastack.IsOutage(ctx, err) && ctx.Err() == nil; wait = min(2*wait, time.Second) {
			if retry.Sleep(ctx, wait) != nil {
				break
			}
			err = g.Settle(ctx, d, commit, 0)
		}
		if cfg.onSettle != nil {
			cfg.onSettle(r, d, commit, err)
		}
	}
	defer func() {
		if !settled {
			settle(false) // next panicked (http.ErrAbortHandler included)
		}
	}()
	next.ServeHTTP(sw, r)
	settle(sw.status() < http.StatusBadRequest)
}

// statusWriter remembers the status a handler wrote (200 if it wrote a body
// without one).
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 && code >= 200 { // 1xx are informational, not the answer
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}

// Flush sends buffered data (a streamed reply), for handlers that assert
// http.Flusher; it implies status 200 when none was written.
func (s *statusWriter) Flush() {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	_ = http.NewResponseController(s.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach Flush, deadlines and hijacking.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func actionRefusal(err error) Refusal {
	status := http.StatusBadRequest
	var hs interface{ HTTPStatus() int }
	if errors.As(err, &hs) && hs.HTTPStatus() >= 400 && hs.HTTPStatus() <= 599 {
		status = hs.HTTPStatus()
	}
	return Refusal{Status: status, Err: err, Body: Denial{Show: "error", Error: "bad_request", Detail: err.Error()}}
}

func errorRefusal(ctx context.Context, err error) Refusal {
	ref := Refusal{Err: err}
	var apiErr *quotastack.APIError
	switch {
	case errors.Is(err, quotastack.ErrInvalidInput):
		ref.Status, ref.Body = http.StatusBadRequest, Denial{Show: "error", Error: "bad_request"}
	case errors.Is(err, quotastack.ErrNotFound) && errors.As(err, &apiErr) && strings.HasSuffix(apiErr.Type, "customer-not-found"):
		// A gate that reports an unknown customer as an error: the same
		// answer as the no_account denial.
		return denialRefusal(Decision{Reason: ReasonNoAccount, Err: err})
	case errors.Is(err, quotastack.ErrIdempotencyConflict):
		ref.Status, ref.Body = http.StatusConflict, Denial{Show: "error", Error: "conflict"}
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || quotastack.IsOutage(ctx, err):
		// QuotaStack could not answer (or the request's own context ended
		// first, when nobody reads the answer anyway).
		ref.Status, ref.Body = http.StatusServiceUnavailable, Denial{Show: "retry", Error: "billing_unavailable"}
		if errors.As(err, &apiErr) {
			ref.RetryAfter = capRetryAfter(apiErr.RetryAfter)
		}
	default: // a definite answer that is our (the tenant's) mistake: key, metric, rule, a 403 or any other 4xx
		ref.Status, ref.Body = http.StatusInternalServerError, Denial{Show: "error", Error: "billing_misconfigured"}
	}
	return ref
}

// denialRefusal answers a denial as the table of reasons says (reasons.go).
func denialRefusal(d Decision) Refusal {
	row := rowOf(d.Reason)
	ref := Refusal{Decision: d, Status: row.status, RetryAfter: row.retryAfter, Body: Denial{Reason: d.Reason, Show: row.show}}
	var apiErr *quotastack.APIError
	if row.status == http.StatusServiceUnavailable && errors.As(d.Err, &apiErr) {
		ref.RetryAfter = capRetryAfter(apiErr.RetryAfter) // QuotaStack's own, when it sent one
	}
	return ref
}

// MaxRetryAfter caps the Retry-After the middleware sends to the app's own
// clients (QuotaStack's, passed on, may be absurd): at most one hour.
const MaxRetryAfter = time.Hour

// capRetryAfter bounds a Retry-After passed on from QuotaStack to
// [0, MaxRetryAfter].
func capRetryAfter(d time.Duration) time.Duration { return min(max(d, 0), MaxRetryAfter) }

// retryAfterSeconds is the Retry-After header value of d: whole seconds,
// rounded up, capped at MaxRetryAfter; 0 for d <= 0 (no header).
func retryAfterSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	d = min(d, MaxRetryAfter)
	return int64((d + time.Second - 1) / time.Second)
}

func writeRefusal(w http.ResponseWriter, _ *http.Request, ref Refusal) {
	if secs := retryAfterSeconds(ref.RetryAfter); secs > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	writeJSON(w, ref.Status, ref.Body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
