package quotastack

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// DefaultMaxHeaderBytes caps the response headers the client's own transport
// accepts (net/http's default is 10 MiB). A caller-supplied transport or
// http.Client keeps its own MaxResponseHeaderBytes.
const DefaultMaxHeaderBytes = 64 << 10

// errUpgrade is a 1xx final answer, such as an unsolicited 101 Switching
// Protocols: the client never asks for an upgrade, so the connection is
// closed at once (net/http would hand it over raw, where no context reaches).
var errUpgrade = errors.New("unsolicited 1xx answer (protocol switch refused)")

// upgradeError carries the 1xx status out of the transport.
type upgradeError struct{ status int }

func (e *upgradeError) Error() string {
	return errUpgrade.Error() + ": status " + strconv.Itoa(e.status)
}

func (e *upgradeError) Unwrap() error { return errUpgrade }

// refuseInformational closes a 1xx final response (101 and any other a
// transport lets through) and turns it into an error.
func refuseInformational(resp *http.Response) error {
	if resp.Body != nil {
		_ = resp.Body.Close() // for a 101 this closes the raw connection
	}
	return &upgradeError{status: resp.StatusCode}
}

// Method classes of the retry policy.
const (
	methodRead  = iota // GET, HEAD: no Idempotency-Key, retried
	methodKeyed        // POST, PATCH: always a key (the caller's or a random one), retried
	methodOther        // PUT, DELETE, anything else: a key only if the caller gives one; retried only then
)

// methodClass returns the retry class of an HTTP method. The contract
// requires an Idempotency-Key on POST and PATCH; PUT and DELETE are not part
// of it, and a server that ignores the key on them would execute a retry
// twice, so only the caller's explicit key (WithIdempotencyKey) makes them retried.
func methodClass(method string) int {
	switch method {
	case http.MethodGet, http.MethodHead:
		return methodRead
	case http.MethodPost, http.MethodPatch:
		return methodKeyed
	}
	return methodOther
}

// safeCause returns err in a form fit for an SDK error: its text without the
// API key and with control characters escaped. When the text held the key,
// the original error is dropped from the chain (its text, reachable through
// errors.Unwrap, would still hold it); errors.Is/As keep working otherwise.
func (c *Client) safeCause(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	red := c.red.redact(msg)
	if red != msg {
		return &redactedError{msg: trim(sanitize(red))}
	}
	if clean := sanitize(msg); clean != msg || len(msg) > maxErrText {
		return &redactedError{msg: trim(clean), err: err}
	}
	return err
}

// requestError builds the *RequestError of a call that got no usable answer.
func (c *Client) requestError(method, path string, attempts int, err error) *RequestError {
	return &RequestError{Method: method, Path: c.red.text(path), Attempts: attempts, Err: c.safeCause(unwrapURLError(err))}
}

// upgradeAPIError is the typed error of a 1xx final answer: an *APIError
// with that status matching ErrUnexpectedResponse.
func (c *Client) upgradeAPIError(method, path string, meta *ResponseMeta, ue *upgradeError) error {
	meta.StatusCode = ue.status
	resp := &http.Response{StatusCode: ue.status, Header: http.Header{}}
	return c.apiError(method, path, meta, resp, nil, fmt.Errorf("%w", ue))
}
