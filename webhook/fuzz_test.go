package webhook_test

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go/webhook"
)

// FuzzVerify checks that Verify never panics, accepts a delivery only when the header
// carries the correct signature and a timestamp within tolerance, and always accepts one
// that does (addValid appends the correct signature to the fuzzed header).
func FuzzVerify(f *testing.F) {
	f.Add(vectorID, vectorTS, vectorSig, []byte(vectorBody), false)
	f.Add(vectorID, vectorTS, "v1,garbage", []byte(vectorBody), true)
	f.Add(vectorID, vectorTS, "v1a,"+vectorSig[3:]+" "+vectorSig, []byte(vectorBody), false)
	f.Add(vectorID, "1614265029", "", []byte(vectorBody), true) // 301s old
	f.Add(vectorID, "1614265030", "", []byte(vectorBody), true) // 300s old: accepted
	f.Add(vectorID, "1614265631", "", []byte(vectorBody), true) // 301s ahead
	f.Add(vectorID, "1614265630", "", []byte(vectorBody), true) // 300s ahead: accepted
	f.Add(vectorID, "0", "", []byte(vectorBody), true)
	f.Add(vectorID, vectorTS, strings.TrimSuffix(vectorSig, "="), []byte(vectorBody), false)
	f.Add(vectorID, "+1614265330", vectorSig, []byte(vectorBody), true)
	f.Add("", vectorTS, vectorSig, []byte(vectorBody), true)
	f.Add("msg_1", "1614265330", "v1, v1,, ,v1 v2,AAAA", []byte(envelope), true)
	f.Add("msg.1614265330", "0", "v1,"+strings.Repeat("A", 44), []byte{}, false)

	v, err := webhook.NewVerifier(testSecret, webhook.WithClock(fixedClock(vectorTime)))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, id, ts, sigHeader string, body []byte, addValid bool) {
		want := refSign(t, testSecret, id, ts, body)
		if addValid {
			sigHeader += " " + want
		}
		h := http.Header{}
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", ts)
		h.Set("webhook-signature", sigHeader)

		err := v.Verify(h, body)
		ev, perr := v.Parse(h, body) // must not panic either

		// ParseUint takes digits only: no sign, no spaces, no underscores in base 10.
		unix, numErr := strconv.ParseUint(ts, 10, 63)
		tsOK := numErr == nil && absDiff(int64(unix), vectorTime.Unix()) <= int64(webhook.DefaultTolerance/time.Second)
		valid := id != "" && tsOK && strings.Contains(sigHeader, want)

		if err == nil && !valid {
			t.Fatalf("Verify accepted an invalid delivery: id=%q ts=%q sig=%q", id, ts, sigHeader)
		}
		if addValid && id != "" && tsOK && err != nil {
			t.Fatalf("Verify rejected a validly signed delivery: %v", err)
		}
		if err != nil && !isSentinel(err) {
			t.Fatalf("Verify returned an unexpected error: %v", err)
		}
		switch {
		case err != nil && (perr == nil || perr.Error() != err.Error()):
			t.Fatalf("Parse and Verify disagree: %v vs %v", perr, err)
		case err == nil && perr != nil && !errors.Is(perr, webhook.ErrInvalidPayload):
			t.Fatalf("Parse of a verified body: %v", perr)
		case perr == nil && (ev == nil || ev.ID == "" || ev.Type == ""):
			t.Fatalf("Parse returned an incomplete event: %+v", ev)
		}
	})
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

func isSentinel(err error) bool {
	for _, s := range []error{
		webhook.ErrMissingHeaders, webhook.ErrInvalidTimestamp, webhook.ErrTimestampTooOld,
		webhook.ErrTimestampTooNew, webhook.ErrNoValidSignature,
	} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}
