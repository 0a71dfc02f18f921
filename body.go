package quotastack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/quotastack/quotastack-go/internal/retry"
)

var (
	errBodyTooLarge   = errors.New("response body exceeds the size limit")
	errEmptyBody      = errors.New("empty response body")
	errRedirect       = errors.New("redirect refused")
	errRepeatedCursor = errors.New("pagination cursor repeated")
)

// errAttemptTimeout is a single attempt that ran out of time; the retry
// policy treats it as a transport error.
var errAttemptTimeout = errors.New("attempt timed out")

func readCapped(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading response body: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, errBodyTooLarge
	}
	return b, nil
}

type problem struct {
	Type      string       `json:"type"`
	Title     string       `json:"title"`
	Detail    string       `json:"detail"`
	Instance  string       `json:"instance"`
	Errors    []FieldError `json:"errors"`
	Required  int64        `json:"required"`
	Available int64        `json:"available"`
}

// apiError builds the typed error for a non-2xx or undecodable response.
func (c *Client) apiError(method, path string, meta *ResponseMeta, resp *http.Response, body []byte, cause error) error {
	// A decode error quotes the server's bytes (a time.ParseError does):
	// redact and sanitize its text like any other server-provided text.
	cause = c.safeCause(cause)
	e := &APIError{Method: method, Path: c.red.text(path), Attempts: meta.Attempts, IdempotencyKey: meta.IdempotencyKey, cause: cause}
	if len(body) > 0 {
		// Redact before anything is cut from it, so a key straddling a cut
		// can't leave a fragment.
		e.rawBody = []byte(c.redact(string(body)))
	}
	if resp != nil {
		e.StatusCode = resp.StatusCode
		e.RequestID = c.red.text(resp.Header.Get("X-Request-Id"))
		e.Replayed = strings.EqualFold(resp.Header.Get("X-Idempotent-Replayed"), "true")
		if d, ok := retry.RetryAfter(resp, time.Now()); ok {
			e.RetryAfter = d
		}
		if resp.StatusCode >= 300 && resp.StatusCode < 400 && e.cause == nil {
			e.cause = errRedirect
		}
	}
	if cause == nil && len(body) > 0 && resp != nil && (resp.StatusCode < 200 || resp.StatusCode > 299) {
		var p problem
		if err := json.Unmarshal(body, &p); err == nil && (p.Type != "" || p.Title != "" || p.Detail != "") {
			e.Type, e.Title, e.Detail, e.Instance = c.redact(p.Type), c.redact(p.Title), c.redact(p.Detail), c.redact(p.Instance)
			e.Errors, e.Required, e.Available = p.Errors, p.Required, p.Available
			for i := range e.Errors {
				e.Errors[i].Field, e.Errors[i].Message = c.redact(e.Errors[i].Field), c.redact(e.Errors[i].Message)
			}
			return e
		}
		var loose struct{ Type, Title, Detail string }
		if err := json.Unmarshal(body, &loose); err == nil && loose.Type != "" {
			e.Type, e.Title, e.Detail = c.redact(loose.Type), c.redact(loose.Title), c.redact(loose.Detail)
			return e
		}
	}
	if len(e.rawBody) > 0 {
		e.Body = snippet(e.rawBody)
	}
	return e
}

func snippet(b []byte) string {
	const maxSnippet = 512
	if len(b) > maxSnippet {
		b = b[:maxSnippet]
	}
	return strings.ToValidUTF8(string(b), "?")
}

// redact removes the API key from server-provided text, in case a hostile or
// buggy server echoes it back (literally, escaped, or in part).
func (c *Client) redact(s string) string { return c.red.redact(s) }

// attemptTransport bounds each attempt by a timeout (headers and body) and
// hides CloseIdleConnections from go-retryablehttp, which would otherwise
// drop the whole connection pool after every failed call.
type attemptTransport struct {
	base    http.RoundTripper
	timeout time.Duration
}

func (t *attemptTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	parent := req.Context()
	// One timer per attempt, at the earlier of the attempt timeout and the
	// call's deadline (which has no context of its own: client.go do).
	now := time.Now()
	end, callBound := now.Add(t.timeout), false
	if st, ok := parent.Value(callStateKey{}).(*callState); ok && !st.deadline.IsZero() && !end.Before(st.deadline) {
		end, callBound = st.deadline, true
		if !now.Before(end) {
			return nil, context.DeadlineExceeded
		}
	}
	ctx, cancel := context.WithDeadline(parent, end)
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err == nil && resp.StatusCode < 200 {
		err = refuseInformational(resp)
	}
	if err != nil {
		// Judge before cancel(): afterwards ctx.Err() is always set, and every
		// transport error would pass for a timeout.
		timedOut := parent.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded)
		cancel()
		switch {
		case timedOut && callBound:
			return nil, context.DeadlineExceeded
		case timedOut:
			return nil, fmt.Errorf("%w after %s", errAttemptTimeout, t.timeout)
		}
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel, parent: parent, attempt: ctx, timeout: t.timeout, callBound: callBound}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel    context.CancelFunc
	parent    context.Context
	attempt   context.Context
	timeout   time.Duration
	callBound bool // the attempt's end is the call's deadline
}

func (b *cancelOnClose) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && b.parent.Err() == nil && b.attempt.Err() != nil {
		if b.callBound {
			return n, context.DeadlineExceeded
		}
		err = fmt.Errorf("%w after %s (reading body)", errAttemptTimeout, b.timeout)
	}
	return n, err
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// redactedError keeps a cause for errors.Is/As while its text goes through
// the client's redaction.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
