package retry_test

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go/internal/retry"
)

// fuzzNow is the clock of the fuzz targets.
var fuzzNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// maxRetryAfterSecs is the largest whole number of seconds a Duration holds.
const maxRetryAfterSecs = int64(math.MaxInt64) / int64(time.Second)

// FuzzParseRetryAfter checks ParseRetryAfter on arbitrary header values and on
// values built from fuzzed numbers: it never panics, a value it accepts is a
// non-negative wait that is whole seconds or an HTTP date, whole seconds and
// HTTP dates (RFC 1123, RFC 850, ANSI C) round-trip, and surrounding
// whitespace changes nothing.
func FuzzParseRetryAfter(f *testing.F) {
	for _, v := range []string{
		"0", "1", " 120 ", "3600", "-1", "+5", "1.5", "10s", "soon", "", "\t", "0x10", "1_000",
		"9223372036854775807", "9223372037", "99999999999999999999",
		"Wed, 21 Oct 2015 07:28:00 GMT", "Wednesday, 21-Oct-15 07:28:00 GMT", "Wed Oct 21 07:28:00 2015",
		"Thu, 25 Nov 2026 12:00:00 UTC", "2026-11-25T12:00:30Z", "Mon, 31 Feb 2026 00:00:00 GMT",
	} {
		f.Add(v, int64(len(v)), int64(90))
	}
	f.Add("", int64(-7), int64(-86400))
	f.Add("", maxRetryAfterSecs+1, int64(100*365*86400))

	f.Fuzz(func(t *testing.T, v string, secs, dateOffset int64) {
		d, ok := retry.ParseRetryAfter(v, fuzzNow)
		switch {
		case ok && d < 0:
			t.Fatalf("%q: accepted with a negative wait %s", v, d)
		case !ok && d != 0:
			t.Fatalf("%q: refused but returned %s", v, d)
		}
		trimmed := strings.TrimSpace(v)
		if ok && !isInteger(trimmed) {
			if _, err := http.ParseTime(trimmed); err != nil {
				t.Fatalf("%q: accepted as %s, but it is neither seconds nor an HTTP date", v, d)
			}
		}
		if isDigits(trimmed) && len(trimmed) <= 18 {
			n, _ := strconv.ParseInt(trimmed, 10, 64)
			if n = min(n, maxRetryAfterSecs); !ok || d != time.Duration(n)*time.Second {
				t.Fatalf("%q: got %s, %v; want %d s", v, d, ok, n)
			}
		}
		for _, pad := range []string{" ", "\t", "  \t "} {
			if d2, ok2 := retry.ParseRetryAfter(pad+v+pad, fuzzNow); d2 != d || ok2 != ok {
				t.Fatalf("%q: padding changed %s, %v into %s, %v", v, d, ok, d2, ok2)
			}
		}

		// Whole seconds round-trip (huge values are capped, not wrapped).
		d, ok = retry.ParseRetryAfter(strconv.FormatInt(secs, 10), fuzzNow)
		switch {
		case secs < 0 && ok:
			t.Fatalf("%d s: a negative wait was accepted", secs)
		case secs >= 0 && (!ok || d != time.Duration(min(secs, maxRetryAfterSecs))*time.Second):
			t.Fatalf("%d s: got %s, %v", secs, d, ok)
		}

		// HTTP dates within a century of now round-trip to the second; a
		// date in the past means now.
		at := fuzzNow.Add(time.Duration(dateOffset%(100*365*86400)) * time.Second)
		want := max(at.Sub(fuzzNow), 0)
		layouts := []string{http.TimeFormat, time.ANSIC}
		if y := at.Year(); y >= 1969 && y <= 2068 { // RFC 850's two-digit year
			layouts = append(layouts, time.RFC850)
		}
		for _, layout := range layouts {
			s := at.UTC().Format(layout)
			if d, ok := retry.ParseRetryAfter(s, fuzzNow); !ok || d != want {
				t.Fatalf("%q: got %s, %v; want %s", s, d, ok, want)
			}
		}
	})
}

// FuzzBackoff checks that every wait Backoff returns is within [min, max]
// (with a Retry-After: the server's wait, at least min, plus at most min of
// jitter, capped at max), that the first retry waits the minimum, and that
// retry n waits at most min·2ⁿ.
func FuzzBackoff(f *testing.F) {
	f.Add(int64(time.Millisecond), int64(20*time.Millisecond), 0, 0, "")
	f.Add(int64(time.Millisecond), int64(20*time.Millisecond), 5, 503, "0")
	f.Add(int64(250*time.Millisecond), int64(5*time.Second), 3, 429, "1")
	f.Add(int64(250*time.Millisecond), int64(5*time.Second), 3, 429, "3600")
	f.Add(int64(250*time.Millisecond), int64(5*time.Second), 3, 500, "2")
	f.Add(int64(time.Second), int64(time.Second), 70, 0, "")
	f.Add(int64(1), int64(math.MaxInt64), 63, 0, "")
	f.Add(int64(-5), int64(0), -1, 429, "soon")
	f.Add(int64(time.Millisecond), int64(time.Minute), 2, 503, "Wed, 21 Oct 2015 07:28:00 GMT")
	f.Add(int64(time.Millisecond), int64(time.Minute), 2, 503, time.Now().Add(30*time.Second).UTC().Format(http.TimeFormat))

	f.Fuzz(func(t *testing.T, minNs, maxNs int64, attempt, status int, retryAfter string) {
		// NewClient guarantees 0 < min <= max; attempts count from 0.
		minW, maxW := time.Duration(minNs&math.MaxInt64), time.Duration(maxNs&math.MaxInt64)
		if maxW < minW {
			minW, maxW = maxW, minW
		}
		minW = max(minW, 1)
		maxW = max(maxW, minW)
		attempt = min(max(attempt, 0), 1000)
		var resp *http.Response
		if status != 0 {
			resp = &http.Response{StatusCode: min(max(status, 100), 599), Header: http.Header{"Retry-After": {retryAfter}}}
		}

		ra, hasRA := retry.RetryAfter(resp, time.Now())
		d := retry.Backoff(minW, maxW, attempt, resp)
		switch {
		case d < minW || d > maxW:
			t.Fatalf("min %s max %s attempt %d: %s is out of [min, max]", minW, maxW, attempt, d)
		case hasRA:
			// Backoff reads the clock again: a date-based wait may have shrunk since.
			lo := min(max(ra, minW), maxW)
			hi := maxW
			if base := max(ra, minW); base <= maxW-minW {
				hi = base + minW
			}
			if d > hi || d < lo-time.Second {
				t.Fatalf("Retry-After %q: waited %s, want [%s, %s] (min %s, max %s)", retryAfter, d, lo, hi, minW, maxW)
			}
		case attempt == 0 && d != minW:
			t.Fatalf("min %s max %s: the first retry waits %s, not min", minW, maxW, d)
		case attempt < 62 && minW <= maxW>>attempt && d > minW<<attempt:
			t.Fatalf("min %s attempt %d: %s is above min·2ⁿ", minW, attempt, d)
		}
	})
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isInteger reports whether s is digits with an optional sign, what
// strconv.ParseInt accepts in base 10.
func isInteger(s string) bool {
	if s != "" && (s[0] == '+' || s[0] == '-') {
		s = s[1:]
	}
	return isDigits(s)
}
