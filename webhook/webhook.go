// Package webhook verifies QuotaStack webhook deliveries, which are signed per the
// Standard Webhooks scheme (https://www.standardwebhooks.com).
//
// Build one [Verifier] with the endpoint's secret and mount [Verifier.Handler], or call
// [Verifier.Parse] from your own handler. [Sign] and [SignedHeaders] produce valid
// deliveries for tests.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names of a Standard Webhooks delivery.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Defaults used by [NewVerifier] when no option overrides them.
const (
	DefaultTolerance = 5 * time.Minute
	// MaxTolerance is the largest tolerance [WithTolerance] accepts: a day.
	// Handled ids are kept twice the tolerance (plus a minute), so a longer
	// one would mostly grow the replay store.
	MaxTolerance        = 24 * time.Hour
	DefaultMaxBodyBytes = 1 << 20 // 1 MiB
)

// Errors returned (wrapped) by [Verifier.Verify], [Verifier.Parse] and [NewVerifier];
// test for them with errors.Is. Their text never contains a secret.
var (
	ErrInvalidSecret    = errors.New("webhook: invalid secret")
	ErrMissingHeaders   = errors.New("webhook: missing webhook-id, webhook-timestamp or webhook-signature header")
	ErrInvalidTimestamp = errors.New("webhook: invalid webhook-timestamp")
	ErrTimestampTooOld  = errors.New("webhook: timestamp too old")
	ErrTimestampTooNew  = errors.New("webhook: timestamp too far in the future")
	ErrNoValidSignature = errors.New("webhook: no valid signature")
	ErrInvalidPayload   = errors.New("webhook: invalid event payload")
	ErrBodyTooLarge     = errors.New("webhook: body too large")
)

const secretPrefix = "whsec_"

// Verifier checks signatures and timestamps of webhook deliveries. Its settings are
// immutable after [NewVerifier]; it is safe for concurrent use.
type Verifier struct {
	keys         [][]byte
	tolerance    time.Duration
	now          func() time.Time
	maxBodyBytes int64
	replay       ReplayStore // nil: no replay protection
	retention    time.Duration
	claimTTL     time.Duration
}

type config struct {
	extraSecrets []string
	tolerance    time.Duration
	now          func() time.Time
	maxBodyBytes int64
	replay       ReplayStore
	noReplay     bool
	retention    time.Duration
	claimTTL     time.Duration
}

// Option configures a [Verifier].
type Option func(*config)

// WithSecrets adds secrets a delivery may also be signed with; a delivery passes if any
// secret verifies it. Use it while rotating the endpoint's secret.
func WithSecrets(secrets ...string) Option {
	return func(c *config) { c.extraSecrets = append(c.extraSecrets, secrets...) }
}

// WithTolerance sets how far the webhook-timestamp may be from the clock, in either
// direction (default 5 minutes). It must be at least one second (timestamps are whole
// seconds) and at most [MaxTolerance].
func WithTolerance(d time.Duration) Option {
	return func(c *config) { c.tolerance = d }
}

// WithClock replaces time.Now as the clock timestamps are checked against (for tests).
func WithClock(now func() time.Time) Option {
	return func(c *config) { c.now = now }
}

// WithMaxBodyBytes caps the body [Verifier.Handler] and [Verifier.ParseRequest] will read
// (default 1 MiB). It must be positive.
func WithMaxBodyBytes(n int64) Option {
	return func(c *config) { c.maxBodyBytes = n }
}

// WithReplayStore sets where [Verifier.Handler] remembers handled webhook-ids (default: a
// [MemoryReplayStore] of its own, for one process). Use a shared store (the Redis one in
// autobuy/redislock) when several replicas receive deliveries.
func WithReplayStore(s ReplayStore) Option {
	return func(c *config) { c.replay = s }
}

// WithoutReplayProtection makes [Verifier.Handler] pass every verified delivery to its
// callback, replays included (for handlers that deduplicate on their own).
func WithoutReplayProtection() Option {
	return func(c *config) { c.noReplay = true }
}

// WithReplayRetention sets how long a handled webhook-id is remembered (default twice the
// tolerance plus a minute, the longest a captured delivery passes the timestamp check).
// A longer retention in a shared store also absorbs the sender's own redeliveries. It must
// exceed the tolerance; claimTTL (default 1 minute, if 0) bounds how long a delivery being
// handled blocks its redeliveries if the handler dies.
func WithReplayRetention(retention, claimTTL time.Duration) Option {
	return func(c *config) { c.retention, c.claimTTL = retention, claimTTL }
}

// NewVerifier returns a Verifier for the endpoint secret: standard base64, with or without
// the "whsec_" prefix. It fails with [ErrInvalidSecret] on an empty or undecodable secret
// (its own or one given to [WithSecrets]), and with a plain error on an invalid option.
func NewVerifier(secret string, opts ...Option) (*Verifier, error) {
	c := config{tolerance: DefaultTolerance, now: time.Now, maxBodyBytes: DefaultMaxBodyBytes}
	for _, opt := range opts {
		if opt != nil {
			opt(&c)
		}
	}
	switch {
	case c.tolerance < time.Second || c.tolerance > MaxTolerance:
		return nil, fmt.Errorf("webhook: tolerance must be between 1s and %s, got %s", MaxTolerance, c.tolerance)
	case c.now == nil:
		return nil, errors.New("webhook: WithClock given a nil clock")
	case c.maxBodyBytes <= 0:
		return nil, fmt.Errorf("webhook: max body bytes must be positive, got %d", c.maxBodyBytes)
	case c.retention != 0 && c.retention <= c.tolerance:
		return nil, fmt.Errorf("webhook: replay retention %s must exceed the tolerance %s", c.retention, c.tolerance)
	case c.claimTTL < 0:
		return nil, fmt.Errorf("webhook: claim TTL must not be negative, got %s", c.claimTTL)
	}
	if c.retention == 0 {
		c.retention = replayRetention(c.tolerance)
	}
	if c.claimTTL == 0 {
		c.claimTTL = DefaultClaimTTL
	}
	if c.replay == nil && !c.noReplay {
		c.replay = NewMemoryReplayStore(0)
	}
	if c.noReplay {
		c.replay = nil
	}
	secrets := append([]string{secret}, c.extraSecrets...)
	keys := make([][]byte, 0, len(secrets))
	for i, s := range secrets {
		key, err := decodeSecret(s)
		if err != nil {
			return nil, fmt.Errorf("%w (secret #%d)", err, i+1)
		}
		keys = append(keys, key)
	}
	return &Verifier{keys: keys, tolerance: c.tolerance, now: c.now, maxBodyBytes: c.maxBodyBytes,
		replay: c.replay, retention: c.retention, claimTTL: c.claimTTL}, nil
}

// decodeSecret returns the HMAC key of a secret. Its errors never quote the secret.
func decodeSecret(secret string) ([]byte, error) {
	s := strings.TrimPrefix(strings.TrimSpace(secret), secretPrefix)
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalidSecret)
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// Some dashboards drop the padding; accept that too.
		if key, err = base64.RawStdEncoding.DecodeString(s); err != nil {
			return nil, fmt.Errorf("%w: not valid base64", ErrInvalidSecret)
		}
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrInvalidSecret)
	}
	return key, nil
}

// Verify checks that body was signed by one of the verifier's secrets and that its
// timestamp is within the tolerance. The signature is checked first, so ErrTimestampTooOld
// and ErrTimestampTooNew mean an authentic delivery that is stale or early (a replay or a
// skewed clock).
func (v *Verifier) Verify(headers http.Header, body []byte) error {
	id := headerValue(headers, HeaderID)
	ts := headerValue(headers, HeaderTimestamp)
	sigs := headerValue(headers, HeaderSignature)
	for _, h := range [...]struct{ name, value string }{{HeaderID, id}, {HeaderTimestamp, ts}, {HeaderSignature, sigs}} {
		if h.value == "" {
			return fmt.Errorf("%w: no %s", ErrMissingHeaders, h.name)
		}
	}
	unix, ok := parseTimestamp(ts)
	if !ok {
		return ErrInvalidTimestamp
	}
	if !v.signatureMatches(id, ts, body, sigs) {
		return ErrNoValidSignature
	}
	// Compare whole seconds: time.Unix wraps around for huge timestamps.
	now := v.now().Unix()
	tolerance := uint64(v.tolerance / time.Second) //nolint:gosec // positive: checked by WithTolerance
	if d := distance(now, unix); now > unix && d > tolerance {
		return fmt.Errorf("%w: sent %ds ago, tolerance %s", ErrTimestampTooOld, d, v.tolerance)
	} else if unix > now && d > tolerance {
		return fmt.Errorf("%w: %ds ahead, tolerance %s", ErrTimestampTooNew, d, v.tolerance)
	}
	return nil
}

// signatureMatches reports whether any v1 entry of the signature header equals the
// signature of one of the keys. Entries of other versions and malformed entries are ignored.
func (v *Verifier) signatureMatches(id, ts string, body []byte, header string) bool {
	entries := strings.Fields(header)
	for _, key := range v.keys {
		want := []byte(signature(key, id, ts, body))
		for _, entry := range entries {
			// Comparing the encoded form rejects alternative base64 spellings of the same MAC.
			if hmac.Equal([]byte(entry), want) {
				return true
			}
		}
	}
	return false
}

// signature returns the "v1,<base64>" signature of a delivery.
func signature(key []byte, id, ts string, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// parseTimestamp accepts only ASCII digits (no sign, no spaces) that fit an int64.
func parseTimestamp(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 19 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// headerValue is headers.Get, falling back to a case-insensitive scan for maps built by
// hand with non-canonical keys. Repeated headers are joined with a space.
func headerValue(headers http.Header, name string) string {
	values := headers.Values(name)
	if len(values) == 0 {
		for k, vs := range headers {
			if strings.EqualFold(k, name) {
				values = vs
				break
			}
		}
	}
	return strings.Join(values, " ")
}

// distance returns |a-b| without overflowing, whatever the two values.
func distance(a, b int64) uint64 {
	if a < b {
		a, b = b, a
	}
	return uint64(a) - uint64(b) //nolint:gosec // a >= b: two's complement subtraction gives the distance
}
