package webhook

import (
	"context"
	"errors"
	"net/http"
)

// Handler returns an http.Handler that accepts POSTs only (405 otherwise), reads the body
// up to the size cap (413 beyond it), verifies and decodes it (400 on failure, with a short
// reason), then calls fn with the request's context. It answers 204 when fn returns nil and
// 500 when fn fails, so QuotaStack retries the delivery; fn's error is not sent back.
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
