package webhook

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// Handler returns an http.Handler that accepts POSTs only (405 otherwise), reads the body
// up to the size cap (413 beyond it), verifies and decodes it (400 on failure, with a short
// reason), then calls fn with the request's context. It answers 204 when fn returns nil and
// 500 when fn fails, so QuotaStack retries the delivery; fn's error is not sent back.
//
// Replays: each verified webhook-id is claimed in the verifier's [ReplayStore] before fn
// runs. A delivery whose id was handled already gets 204 without calling fn (a 2xx, so the
// sender stops retrying it); one whose id is being handled right now gets 409 (the sender
// retries later, and fn's outcome decides); when the store fails, 503 (retried later, fn
// not called). A failed fn abandons the claim, so the redelivery is handled.
func (v *Verifier) Handler(fn func(ctx context.Context, ev *Event) error) http.Handler {
	if fn == nil {
		panic("webhook: Handler called with a nil fn")
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		var body []byte
		var err error
		if r.Body != nil {
			// MaxBytesReader also tells the server to close the connection past the cap.
			body, err = v.readBody(r.ContentLength, http.MaxBytesReader(w, r.Body, v.maxBodyBytes))
		}
		if err != nil {
			if errors.Is(err, ErrBodyTooLarge) {
				http.Error(w, ErrBodyTooLarge.Error(), http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "webhook: could not read body", http.StatusBadRequest)
			return
		}
		ev, err := v.Parse(r.Header, body)
		if err != nil {
			http.Error(w, publicReason(err), http.StatusBadRequest)
			return
		}
		if v.replay != nil {
			v.serveOnce(w, r, ev, fn)
			return
		}
		if err := fn(r.Context(), ev); err != nil {
			http.Error(w, "webhook: handler failed", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// publicReason is the text a 400 response carries: a sentinel's fixed message only, so no
// detail (and never a secret) reaches the sender.
func publicReason(err error) string {
	for _, sentinel := range []error{
		ErrMissingHeaders, ErrInvalidTimestamp, ErrTimestampTooOld, ErrTimestampTooNew,
		ErrNoValidSignature, ErrInvalidPayload, ErrBodyTooLarge,
	} {
		if errors.Is(err, sentinel) {
			return sentinel.Error()
		}
	}
	return "webhook: invalid delivery"
}

// storeTimeout bounds each replay-store call, whatever the request's context.
const storeTimeout = 2 * time.Second

// serveOnce runs fn for a delivery whose id is not known to the replay store.
func (v *Verifier) serveOnce(w http.ResponseWriter, r *http.Request, ev *Event, fn func(ctx context.Context, ev *Event) error) {
	storeCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(r.Context()), storeTimeout)
	}
	ctx, cancel := storeCtx()
	claim, err := v.replay.Claim(ctx, ev.WebhookID, v.claimTTL)
	cancel()
	switch {
	case err != nil:
		http.Error(w, "webhook: replay store unavailable", http.StatusServiceUnavailable)
		return
	case claim == ClaimDone:
		w.Header().Set("Webhook-Replay", "true")
		w.WriteHeader(http.StatusNoContent)
		return
	case claim == ClaimInFlight:
		w.Header().Set("Retry-After", "5")
		http.Error(w, "webhook: this delivery is being handled", http.StatusConflict)
		return
	}
	if err := v.runClaimed(r.Context(), ev, fn); err != nil {
		ctx, cancel := storeCtx()
		_ = v.replay.Abandon(ctx, ev.WebhookID) // if this fails, the claim lapses after its TTL
		cancel()
		http.Error(w, "webhook: handler failed", http.StatusInternalServerError)
		return
	}
	ctx, cancel = storeCtx()
	_ = v.replay.Complete(ctx, ev.WebhookID, v.retention) // fn ran: answer 2xx whatever the store says
	cancel()
	w.WriteHeader(http.StatusNoContent)
}

// runClaimed calls fn, turning a panic into an error after abandoning the claim
// (the panic is re-raised for net/http to log).
func (v *Verifier) runClaimed(ctx context.Context, ev *Event, fn func(ctx context.Context, ev *Event) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
			_ = v.replay.Abandon(actx, ev.WebhookID)
			cancel()
			panic(p)
		}
	}()
	return fn(ctx, ev)
}
