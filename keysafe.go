package quotastack

import (
	"io"
	"net/http"
	"sync/atomic"
)

// RedactingTransport returns base (nil: http.DefaultTransport) wrapped so
// that nothing it reports holds the request's API key: the text of its errors,
// of errors reading or closing a response body, and the response's status
// text. net/http quotes a malformed status line, header, chunk or trailer in
// its errors, where a hostile server can echo the key it received. Put it
// right above the network transport, below anything that records error text
// (otelhttp writes it into spans): otelquotastack.Transport does so, and a
// caller composing its own instrumentation for WithHTTPClient should too.
// The key is read from each request's X-API-Key header. Safe for concurrent use.
func RedactingTransport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &redactingTransport{base: base}
}

type redactingTransport struct {
	base http.RoundTripper
	last atomic.Pointer[redactor] // the redactor of the last key seen (one client: one key)
}

func (t *redactingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	red := t.redactorOf(r)
	if red == nil {
		return resp, err
	}
	if err != nil {
		return resp, red.error(err)
	}
	if resp != nil {
		resp.Status = red.text(resp.Status)
		if resp.Body != nil && resp.Body != http.NoBody {
			resp.Body = &redactingBody{ReadCloser: resp.Body, red: red}
		}
	}
	return resp, nil
}

// CloseIdleConnections passes on to base.
func (t *redactingTransport) CloseIdleConnections() {
	if ci, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

func (t *redactingTransport) redactorOf(r *http.Request) *redactor {
	vs := r.Header["X-Api-Key"]
	if len(vs) == 0 || vs[0] == "" {
		return nil
	}
	if red := t.last.Load(); red != nil && red.key == vs[0] {
		return red
	}
	red := newRedactor(vs[0])
	t.last.Store(red)
	return red
}

// redactingBody redacts the errors of a response body.
type redactingBody struct {
	io.ReadCloser
	red *redactor
}

func (b *redactingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF { //nolint:errorlint // io.EOF is returned unwrapped by contract
		err = b.red.error(err)
	}
	return n, err
}

func (b *redactingBody) Close() error {
	if err := b.ReadCloser.Close(); err != nil {
		return b.red.error(err)
	}
	return nil
}

// error returns err, or an error of its redacted text without the original
// in the chain when its text held key material.
func (r *redactor) error(err error) error {
	msg := err.Error()
	if red := r.redact(msg); red != msg {
		return &redactedError{msg: trim(sanitize(red))}
	}
	return err
}
