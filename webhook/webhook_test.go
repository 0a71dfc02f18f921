package webhook_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/webhook"
)

const (
	// testSecret is base64("quotastack-test-secret-0123456789").
	testSecret = "cXVvdGFzdGFjay10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5"
	// oldSecret is base64("quotastack-old-secret-9876543210"), the secret being rotated out.
	oldSecret = "cXVvdGFzdGFjay1vbGQtc2VjcmV0LTk4NzY1NDMyMTA="
	// stdSecret is the Standard Webhooks specification's published test secret.
	stdSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

	vectorID   = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTS   = "1614265330"
	vectorBody = `{"test": 2432232314}`

	// Pinned signatures of (vectorID, vectorTS, vectorBody), computed once with crypto/hmac.
	vectorSig    = "v1,IBFJ+EAGnIGum2w5P/O1PIwMCd3isKJtxf1brQvi1PQ="
	vectorOldSig = "v1,zC0Q7QCT0A5XfsUh8WtWvCJVm2HEaewlUm3X4k9jyo8="
	vectorStdSig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=" // from the Standard Webhooks spec
)

var vectorTime = time.Unix(1614265330, 0)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// refSign is the test's own implementation of the scheme, independent of the package.
func refSign(t testing.TB, secret, id, ts string, body []byte) string {
	t.Helper()
	if len(secret) > 6 && secret[:6] == "whsec_" {
		secret = secret[6:]
	}
	key, err := base64.StdEncoding.DecodeString(secret)
	require.NoError(t, err)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func headers(id, ts, sig string) http.Header {
	h := http.Header{}
	if id != "" {
		h.Set("webhook-id", id)
	}
	if ts != "" {
		h.Set("webhook-timestamp", ts)
	}
	if sig != "" {
		h.Set("webhook-signature", sig)
	}
	return h
}

func newVerifier(t *testing.T, opts ...webhook.Option) *webhook.Verifier {
	t.Helper()
	v, err := webhook.NewVerifier(testSecret, append([]webhook.Option{webhook.WithClock(fixedClock(vectorTime))}, opts...)...)
	require.NoError(t, err)
	return v
}

func TestKnownVectors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, secret, want string
	}{
		{"quotastack test secret", testSecret, vectorSig},
		{"old secret", oldSecret, vectorOldSig},
		{"standard webhooks spec vector", stdSecret, vectorStdSig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, refSign(t, tt.secret, vectorID, vectorTS, []byte(vectorBody)))

			got, err := webhook.Sign(tt.secret, vectorID, vectorTime, []byte(vectorBody))
			require.NoError(t, err)
			require.Equal(t, tt.want, got)

			v, err := webhook.NewVerifier(tt.secret, webhook.WithClock(fixedClock(vectorTime)))
			require.NoError(t, err)
			require.NoError(t, v.Verify(headers(vectorID, vectorTS, tt.want), []byte(vectorBody)))
		})
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	body := []byte(vectorBody)
	sigAt := func(offset time.Duration) (string, string) {
		ts := strconv.FormatInt(vectorTime.Add(offset).Unix(), 10)
		return ts, refSign(t, testSecret, vectorID, ts, body)
	}
	oldTS, oldSig := sigAt(-5*time.Minute - time.Second)
	edgeOldTS, edgeOldSig := sigAt(-5 * time.Minute)
	newTS, newSig := sigAt(5*time.Minute + time.Second)
	edgeNewTS, edgeNewSig := sigAt(5 * time.Minute)
	wrongSig := refSign(t, "b3RoZXItc2VjcmV0", vectorID, vectorTS, body) // base64("other-secret")

	tests := []struct {
		name    string
		headers http.Header
		body    string
		wantErr error
	}{
		{"good signature", headers(vectorID, vectorTS, vectorSig), vectorBody, nil},
		{"bad signature", headers(vectorID, vectorTS, wrongSig), vectorBody, webhook.ErrNoValidSignature},
		{"tampered body", headers(vectorID, vectorTS, vectorSig), `{"test": 2432232315}`, webhook.ErrNoValidSignature},
		{"body with trailing newline", headers(vectorID, vectorTS, vectorSig), vectorBody + "\n", webhook.ErrNoValidSignature},
		{"tampered id", headers("msg_p5jXN8AQM9LWM0D4loKWxJel", vectorTS, vectorSig), vectorBody, webhook.ErrNoValidSignature},
		{"tampered timestamp", headers(vectorID, "1614265331", vectorSig), vectorBody, webhook.ErrNoValidSignature},
		{"timestamp too old", headers(vectorID, oldTS, oldSig), vectorBody, webhook.ErrTimestampTooOld},
		{"timestamp at the old edge", headers(vectorID, edgeOldTS, edgeOldSig), vectorBody, nil},
		{"timestamp too new", headers(vectorID, newTS, newSig), vectorBody, webhook.ErrTimestampTooNew},
		{"timestamp at the new edge", headers(vectorID, edgeNewTS, edgeNewSig), vectorBody, nil},
		{"stale and forged reports the signature", headers(vectorID, oldTS, wrongSig), vectorBody, webhook.ErrNoValidSignature},
		{"rotation: second of two signatures valid", headers(vectorID, vectorTS, wrongSig+" "+vectorSig), vectorBody, nil},
		{"rotation: first of two signatures valid", headers(vectorID, vectorTS, vectorSig+" "+wrongSig), vectorBody, nil},
		{"missing id", headers("", vectorTS, vectorSig), vectorBody, webhook.ErrMissingHeaders},
		{"missing timestamp", headers(vectorID, "", vectorSig), vectorBody, webhook.ErrMissingHeaders},
		{"missing signature", headers(vectorID, vectorTS, ""), vectorBody, webhook.ErrMissingHeaders},
		{"no headers", http.Header{}, vectorBody, webhook.ErrMissingHeaders},
		{"nil headers", nil, vectorBody, webhook.ErrMissingHeaders},
		{"non-numeric timestamp", headers(vectorID, "yesterday", vectorSig), vectorBody, webhook.ErrInvalidTimestamp},
		{"RFC 3339 timestamp", headers(vectorID, "2021-02-25T15:02:10Z", vectorSig), vectorBody, webhook.ErrInvalidTimestamp},
		{"signed timestamp", headers(vectorID, "+1614265330", vectorSig), vectorBody, webhook.ErrInvalidTimestamp},
		{"negative timestamp", headers(vectorID, "-1614265330", vectorSig), vectorBody, webhook.ErrInvalidTimestamp},
		{"fractional timestamp", headers(vectorID, "1614265330.5", vectorSig), vectorBody, webhook.ErrInvalidTimestamp},
		{"millisecond timestamp", headers(vectorID, "1614265330000", refSign(t, testSecret, vectorID, "1614265330000", body)), vectorBody, webhook.ErrTimestampTooNew},
		{"overflowing timestamp", headers(vectorID, "99999999999999999999", vectorSig), vectorBody, webhook.ErrInvalidTimestamp},
		{"huge timestamp", headers(vectorID, "9223372036854775807", refSign(t, testSecret, vectorID, "9223372036854775807", body)), vectorBody, webhook.ErrTimestampTooNew},
		{"zero timestamp", headers(vectorID, "0", refSign(t, testSecret, vectorID, "0", body)), vectorBody, webhook.ErrTimestampTooOld},
		{"malformed: version only", headers(vectorID, vectorTS, "v1"), vectorBody, webhook.ErrNoValidSignature},
		{"malformed: empty signature", headers(vectorID, vectorTS, "v1,"), vectorBody, webhook.ErrNoValidSignature},
		{"malformed: comma only", headers(vectorID, vectorTS, ","), vectorBody, webhook.ErrNoValidSignature},
		{"malformed: not base64", headers(vectorID, vectorTS, "v1,!!!not-base64!!!"), vectorBody, webhook.ErrNoValidSignature},
		{"malformed: spaces only", headers(vectorID, vectorTS, "   "), vectorBody, webhook.ErrNoValidSignature},
		{"malformed: trailing garbage", headers(vectorID, vectorTS, vectorSig+"AA"), vectorBody, webhook.ErrNoValidSignature},
		{"malformed: truncated signature", headers(vectorID, vectorTS, vectorSig[:len(vectorSig)-1]), vectorBody, webhook.ErrNoValidSignature},
		{"malformed: signature prefix", headers(vectorID, vectorTS, vectorSig[:10]), vectorBody, webhook.ErrNoValidSignature},
		{"malformed: raw base64 without version", headers(vectorID, vectorTS, vectorSig[3:]), vectorBody, webhook.ErrNoValidSignature},
		{"malformed entries around a valid one", headers(vectorID, vectorTS, "v1, garbage v1,!!! "+vectorSig+" ,,"), vectorBody, nil},
		{"unknown version ignored", headers(vectorID, vectorTS, "v1a,"+vectorSig[3:]), vectorBody, webhook.ErrNoValidSignature},
		{"unknown version beside a valid one", headers(vectorID, vectorTS, "v1a,"+vectorSig[3:]+" "+vectorSig), vectorBody, nil},
		{"upper-case version", headers(vectorID, vectorTS, "V1,"+vectorSig[3:]), vectorBody, webhook.ErrNoValidSignature},
		{"extra whitespace", headers(vectorID, vectorTS, "  "+vectorSig+"\t "), vectorBody, nil},
		{"non-canonical header keys", http.Header{
			"webhook-id": {vectorID}, "webhook-timestamp": {vectorTS}, "webhook-signature": {vectorSig},
		}, vectorBody, nil},
		{"repeated signature headers", http.Header{
			"Webhook-Id": {vectorID}, "Webhook-Timestamp": {vectorTS}, "Webhook-Signature": {wrongSig, vectorSig},
		}, vectorBody, nil},
	}
	v := newVerifier(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := v.Verify(tt.headers, []byte(tt.body))
			if tt.wantErr == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tt.wantErr)
		})
	}
}

func TestVerifyRotatedSecrets(t *testing.T) {
	t.Parallel()
	body := []byte(vectorBody)
	thirdSecret := "dGhpcmQtc2VjcmV0LW5vdC1jb25maWd1cmVk" // base64("third-secret-not-configured")
	tests := []struct {
		name    string
		sig     string
		wantErr error
	}{
		{"signed with the primary secret", vectorSig, nil},
		{"signed with the rotated-out secret", vectorOldSig, nil},
		{"sender sends both", vectorOldSig + " " + vectorSig, nil},
		{"signed with an unknown secret", refSign(t, thirdSecret, vectorID, vectorTS, body), webhook.ErrNoValidSignature},
	}
	v := newVerifier(t, webhook.WithSecrets(oldSecret))
	primaryOnly := newVerifier(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := v.Verify(headers(vectorID, vectorTS, tt.sig), body)
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
			}
		})
	}
	t.Run("primary only rejects the old secret", func(t *testing.T) {
		t.Parallel()
		require.ErrorIs(t, primaryOnly.Verify(headers(vectorID, vectorTS, vectorOldSig), body), webhook.ErrNoValidSignature)
	})
}

func TestVerifyTolerance(t *testing.T) {
	t.Parallel()
	body := []byte(vectorBody)
	tests := []struct {
		name      string
		tolerance time.Duration
		clock     time.Time
		wantErr   error
	}{
		{"default tolerance, 4m59s late", 0, vectorTime.Add(299 * time.Second), nil},
		{"default tolerance, 5m1s late", 0, vectorTime.Add(301 * time.Second), webhook.ErrTimestampTooOld},
		{"default tolerance, clock 5m1s behind", 0, vectorTime.Add(-301 * time.Second), webhook.ErrTimestampTooNew},
		{"10s tolerance, 11s late", 10 * time.Second, vectorTime.Add(11 * time.Second), webhook.ErrTimestampTooOld},
		{"10s tolerance, 10s late", 10 * time.Second, vectorTime.Add(10 * time.Second), nil},
		{"10s tolerance, 11s early", 10 * time.Second, vectorTime.Add(-11 * time.Second), webhook.ErrTimestampTooNew},
		{"1h tolerance, 59m late", time.Hour, vectorTime.Add(59 * time.Minute), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := []webhook.Option{webhook.WithClock(fixedClock(tt.clock))}
			if tt.tolerance != 0 {
				opts = append(opts, webhook.WithTolerance(tt.tolerance))
			}
			v, err := webhook.NewVerifier(testSecret, opts...)
			require.NoError(t, err)
			err = v.Verify(headers(vectorID, vectorTS, vectorSig), body)
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
			}
		})
	}
}

func TestNewVerifier(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		secret  string
		opts    []webhook.Option
		wantErr bool
		isErr   error
	}{
		{"plain base64", testSecret, nil, false, nil},
		{"whsec_ prefix", "whsec_" + testSecret, nil, false, nil},
		{"surrounding whitespace", " " + testSecret + "\n", nil, false, nil},
		{"unpadded base64", "cXVvdGFzdGFjay1vbGQtc2VjcmV0LTk4NzY1NDMyMTA", nil, false, nil},
		{"empty", "", nil, true, webhook.ErrInvalidSecret},
		{"prefix only", "whsec_", nil, true, webhook.ErrInvalidSecret},
		{"not base64", "not base64!!", nil, true, webhook.ErrInvalidSecret},
		{"bad rotated secret", testSecret, []webhook.Option{webhook.WithSecrets("whsec_%%%")}, true, webhook.ErrInvalidSecret},
		{"empty rotated secret", testSecret, []webhook.Option{webhook.WithSecrets("")}, true, webhook.ErrInvalidSecret},
		{"zero tolerance", testSecret, []webhook.Option{webhook.WithTolerance(0)}, true, nil},
		{"sub-second tolerance", testSecret, []webhook.Option{webhook.WithTolerance(500 * time.Millisecond)}, true, nil},
		{"negative tolerance", testSecret, []webhook.Option{webhook.WithTolerance(-time.Second)}, true, nil},
		{"nil clock", testSecret, []webhook.Option{webhook.WithClock(nil)}, true, nil},
		{"zero max body", testSecret, []webhook.Option{webhook.WithMaxBodyBytes(0)}, true, nil},
		{"nil option ignored", testSecret, []webhook.Option{nil}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v, err := webhook.NewVerifier(tt.secret, tt.opts...)
			if !tt.wantErr {
				require.NoError(t, err)
				require.NotNil(t, v)
				return
			}
			require.Error(t, err)
			require.Nil(t, v)
			if tt.isErr != nil {
				require.ErrorIs(t, err, tt.isErr)
			}
			if len(tt.secret) > 8 {
				require.NotContains(t, err.Error(), tt.secret)
			}
		})
	}
}

func TestWhsecPrefixVerifies(t *testing.T) {
	t.Parallel()
	for _, secret := range []string{testSecret, "whsec_" + testSecret} {
		v, err := webhook.NewVerifier(secret, webhook.WithClock(fixedClock(vectorTime)))
		require.NoError(t, err)
		require.NoError(t, v.Verify(headers(vectorID, vectorTS, vectorSig), []byte(vectorBody)))
	}
}

func TestSign(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		secret  string
		id      string
		ts      time.Time
		wantErr bool
	}{
		{"valid", testSecret, vectorID, vectorTime, false},
		{"whsec_ prefix", "whsec_" + testSecret, vectorID, vectorTime, false},
		{"bad secret", "%%%", vectorID, vectorTime, true},
		{"empty secret", "", vectorID, vectorTime, true},
		{"empty id", testSecret, "", vectorTime, true},
		{"before 1970", testSecret, vectorID, time.Unix(-1, 0), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sig, err := webhook.Sign(tt.secret, tt.id, tt.ts, []byte(vectorBody))
			h, herr := webhook.SignedHeaders(tt.secret, tt.id, tt.ts, []byte(vectorBody))
			if tt.wantErr {
				require.Error(t, err)
				require.Error(t, herr)
				require.Empty(t, sig)
				require.Nil(t, h)
				return
			}
			require.NoError(t, err)
			require.NoError(t, herr)
			require.Equal(t, vectorSig, sig)
			require.Equal(t, http.Header{
				"Webhook-Id":        {vectorID},
				"Webhook-Timestamp": {vectorTS},
				"Webhook-Signature": {vectorSig},
			}, h)
			require.NoError(t, newVerifier(t).Verify(h, []byte(vectorBody)))
		})
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		sign    bool
		want    *webhook.Event
		wantErr error
	}{
		{
			name: "renewal due",
			body: `{"id":"evt_1","type":"subscription.renewal_due","created_at":"2021-02-25T15:02:10Z","data":{"customer_id":"c1"}}`,
			sign: true,
			want: &webhook.Event{
				ID: "evt_1", Type: webhook.EventSubscriptionRenewalDue,
				CreatedAt: time.Date(2021, 2, 25, 15, 2, 10, 0, time.UTC), Data: []byte(`{"customer_id":"c1"}`),
			},
		},
		{
			name: "unknown fields and no data",
			body: `{"id":"evt_2","type":"subscription.renewed","created_at":"2021-02-25T15:02:10.5Z","api_version":"2"}`,
			sign: true,
			want: &webhook.Event{
				ID: "evt_2", Type: webhook.EventSubscriptionRenewed,
				CreatedAt: time.Date(2021, 2, 25, 15, 2, 10, 500_000_000, time.UTC),
			},
		},
		{"not JSON", `not json`, true, nil, webhook.ErrInvalidPayload},
		{"JSON array", `[1,2]`, true, nil, webhook.ErrInvalidPayload},
		{"empty body", ``, true, nil, webhook.ErrInvalidPayload},
		{"missing type", `{"id":"evt_3","data":{}}`, true, nil, webhook.ErrInvalidPayload},
		{"missing id", `{"type":"subscription.renewed"}`, true, nil, webhook.ErrInvalidPayload},
		{"bad created_at", `{"id":"evt_4","type":"x","created_at":"yesterday"}`, true, nil, webhook.ErrInvalidPayload},
		{"id of the wrong type", `{"id":4,"type":"x"}`, true, nil, webhook.ErrInvalidPayload},
		{"valid envelope, not signed", `{"id":"evt_5","type":"subscription.renewed"}`, false, nil, webhook.ErrNoValidSignature},
	}
	v := newVerifier(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sig := vectorSig
			if tt.sign {
				sig = refSign(t, testSecret, vectorID, vectorTS, []byte(tt.body))
			}
			ev, err := v.Parse(headers(vectorID, vectorTS, sig), []byte(tt.body))
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.Nil(t, ev)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want.ID, ev.ID)
			require.Equal(t, vectorID, ev.WebhookID)
			require.Equal(t, tt.want.Type, ev.Type)
			require.True(t, tt.want.CreatedAt.Equal(ev.CreatedAt), "created_at %s", ev.CreatedAt)
			require.Equal(t, string(tt.want.Data), string(ev.Data))
		})
	}
}

func TestVerifyConcurrent(t *testing.T) {
	t.Parallel()
	v := newVerifier(t, webhook.WithSecrets(oldSecret))
	errs := make([]error, 32)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sig := vectorSig
			if i%2 == 1 {
				sig = vectorOldSig
			}
			errs[i] = v.Verify(headers(vectorID, vectorTS, sig), []byte(vectorBody))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "goroutine %d", i)
	}
}
