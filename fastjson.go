package quotastack

import (
	"bytes"
	"math"
	"unicode/utf8"
)

// The gate's two answers (an entitlement and a usage event) are decoded by a
// small hand-written reader instead of encoding/json's reflection, which was
// nearly half of the client's CPU on the gate's happy path. It takes only a plain
// subset of JSON: a flat object whose known members are unescaped ASCII keys
// with strings, integers, booleans or RFC 3339 times. Anything else (an
// escape, a null, a float, a key that differs from a field's name only in
// case, invalid JSON) makes it give up, and the answer goes to encoding/json,
// which then decides. FuzzFastDecode checks that whatever it accepts, it
// decodes exactly as encoding/json does.

// fastDecoder is an answer type with a fast path; decodeFast reports false,
// leaving the value untouched, when the input is outside that path.
type fastDecoder interface{ decodeFast(b []byte) bool }

// fastReader walks one JSON text. Every method reports false to give up.
type fastReader struct {
	b []byte
	i int
}

// fastMaxDepth bounds the nesting of the values it skips; deeper goes to encoding/json.
const fastMaxDepth = 32

func (r *fastReader) space() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// object reads the whole text as one object and calls member for each of its
// members, with the reader placed at the member's value.
func (r *fastReader) object(member func(key []byte) bool) bool {
	r.space()
	if r.i >= len(r.b) || r.b[r.i] != '{' {
		return false
	}
	r.i++
	r.space()
	if r.i < len(r.b) && r.b[r.i] == '}' {
		r.i++
		return r.end()
	}
	for {
		key, ok := r.key()
		if !ok {
			return false
		}
		r.space()
		if r.i >= len(r.b) || r.b[r.i] != ':' {
			return false
		}
		r.i++
		r.space()
		if !member(key) {
			return false
		}
		r.space()
		if r.i >= len(r.b) {
			return false
		}
		switch r.b[r.i] {
		case ',':
			r.i++
			r.space()
		case '}':
			r.i++
			return r.end()
		default:
			return false
		}
	}
}

// end accepts only trailing white space.
func (r *fastReader) end() bool {
	r.space()
	return r.i == len(r.b)
}

// key reads a member name: printable ASCII without escapes only.
func (r *fastReader) key() ([]byte, bool) {
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return nil, false
	}
	start := r.i + 1
	for j := start; j < len(r.b); j++ {
		c := r.b[j]
		switch {
		case c == '"':
			r.i = j + 1
			return r.b[start:j], true
		case c == '\\' || c < 0x20 || c >= utf8.RuneSelf:
			return nil, false
		}
	}
	return nil, false
}

// rawString reads a string without escapes and returns its contents.
func (r *fastReader) rawString() ([]byte, bool) {
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return nil, false
	}
	start := r.i + 1
	ascii := true
	for j := start; j < len(r.b); j++ {
		c := r.b[j]
		switch {
		case c == '"':
			s := r.b[start:j]
			if !ascii && !utf8.Valid(s) {
				return nil, false // encoding/json would replace the bad bytes
			}
			r.i = j + 1
			return s, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

func (r *fastReader) str(dst *string) bool {
	s, ok := r.rawString()
	if ok {
		*dst = string(s)
	}
	return ok
}

// int64 reads an integer without fraction or exponent that fits in an int64.
func (r *fastReader) int64(dst *int64) bool {
	j := r.i
	neg := j < len(r.b) && r.b[j] == '-'
	if neg {
		j++
	}
	start := j
	var n int64 // accumulated with its sign, so that math.MinInt64 fits
	for ; j < len(r.b) && r.b[j] >= '0' && r.b[j] <= '9'; j++ {
		d := int64(r.b[j] - '0')
		if neg {
			if n < (math.MinInt64+d)/10 {
				return false
			}
			n = n*10 - d
		} else {
			if n > (math.MaxInt64-d)/10 {
				return false
			}
			n = n*10 + d
		}
	}
	switch digits := j - start; {
	case digits == 0, digits > 1 && r.b[start] == '0': // no digits, or a leading zero
		return false
	case j < len(r.b) && (r.b[j] == '.' || r.b[j] == 'e' || r.b[j] == 'E'):
		return false
	}
	r.i, *dst = j, n
	return true
}

func (r *fastReader) bool(dst *bool) bool {
	switch {
	case bytes.HasPrefix(r.b[r.i:], []byte("true")):
		*dst, r.i = true, r.i+4
	case bytes.HasPrefix(r.b[r.i:], []byte("false")):
		*dst, r.i = false, r.i+5
	default:
		return false
	}
	return true
}

// quoted reads a string without escapes and returns it with its quotes, as
// encoding/json hands it to an UnmarshalJSON method.
func (r *fastReader) quoted() ([]byte, bool) {
	start := r.i
	_, ok := r.rawString()
	return r.b[start:r.i], ok
}

// unknown skips the value of a member that is no field of the type, unless
// its name matches one of names apart from case: encoding/json would fill
// that field, so the decision is left to it.
func (r *fastReader) unknown(key []byte, names []string) bool {
	for _, n := range names {
		if len(n) == len(key) && bytes.EqualFold(key, []byte(n)) {
			return false
		}
	}
	return r.skip(0)
}

// skip passes over one valid JSON value.
func (r *fastReader) skip(depth int) bool {
	if r.i >= len(r.b) || depth > fastMaxDepth {
		return false
	}
	switch c := r.b[r.i]; {
	case c == '"':
		return r.skipString()
	case c == '{' || c == '[':
		return r.skipComposite(depth)
	case c == '-' || (c >= '0' && c <= '9'):
		return r.skipNumber()
	default:
		for _, lit := range [...]string{"true", "false", "null"} {
			if bytes.HasPrefix(r.b[r.i:], []byte(lit)) {
				r.i += len(lit)
				return true
			}
		}
		return false
	}
}

func (r *fastReader) skipComposite(depth int) bool {
	closer := byte(']')
	if r.b[r.i] == '{' {
		closer = '}'
	}
	r.i++
	r.space()
	if r.i < len(r.b) && r.b[r.i] == closer {
		r.i++
		return true
	}
	for {
		if closer == '}' {
			if r.i >= len(r.b) || r.b[r.i] != '"' || !r.skipString() {
				return false
			}
			r.space()
			if r.i >= len(r.b) || r.b[r.i] != ':' {
				return false
			}
			r.i++
			r.space()
		}
		if !r.skip(depth + 1) {
			return false
		}
		r.space()
		if r.i >= len(r.b) {
			return false
		}
		switch r.b[r.i] {
		case ',':
			r.i++
			r.space()
		case closer:
			r.i++
			return true
		default:
			return false
		}
	}
}

// skipString passes over a string, escapes included; it only has to be valid.
func (r *fastReader) skipString() bool {
	for j := r.i + 1; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			r.i = j + 1
			return true
		case c < 0x20:
			return false
		case c == '\\':
			j++
			if j >= len(r.b) {
				return false
			}
			switch r.b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(r.b) {
					return false
				}
				for _, h := range r.b[j+1 : j+5] {
					if !isHex(h) {
						return false
					}
				}
				j += 4
			default:
				return false
			}
		}
	}
	return false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// skipNumber passes over a number in the JSON grammar.
func (r *fastReader) skipNumber() bool {
	j := r.i
	if r.b[j] == '-' {
		j++
	}
	digits := func() int {
		n := 0
		for ; j < len(r.b) && r.b[j] >= '0' && r.b[j] <= '9'; j++ {
			n++
		}
		return n
	}
	start := j
	if n := digits(); n == 0 || (n > 1 && r.b[start] == '0') {
		return false
	}
	if j < len(r.b) && r.b[j] == '.' {
		j++
		if digits() == 0 {
			return false
		}
	}
	if j < len(r.b) && (r.b[j] == 'e' || r.b[j] == 'E') {
		j++
		if j < len(r.b) && (r.b[j] == '+' || r.b[j] == '-') {
			j++
		}
		if digits() == 0 {
			return false
		}
	}
	r.i = j
	return true
}

var entitlementNames = []string{"allowed", "customer_id", "external_customer_id", "billable_metric_key", "units", "balance",
	"reserved_balance", "effective_balance", "estimated_cost", "balance_after", "subscription_status", "overage_policy"}

func (e *Entitlement) decodeFast(b []byte) bool {
	t := *e
	r := fastReader{b: b}
	ok := r.object(func(key []byte) bool {
		switch string(key) {
		case "allowed":
			return r.bool(&t.Allowed)
		case "customer_id":
			return r.str(&t.CustomerID)
		case "external_customer_id":
			return r.str(&t.ExternalCustomerID)
		case "billable_metric_key":
			return r.str(&t.BillableMetricKey)
		case "units":
			return r.int64(&t.Units)
		case "balance":
			return r.int64(&t.Balance)
		case "reserved_balance":
			return r.int64(&t.ReservedBalance)
		case "effective_balance":
			return r.int64(&t.EffectiveBalance)
		case "estimated_cost":
			return r.int64(&t.EstimatedCost)
		case "balance_after":
			return r.int64(&t.BalanceAfter)
		case "subscription_status":
			return r.str(&t.SubscriptionStatus)
		case "overage_policy":
			return r.str(&t.OveragePolicy)
		}
		return r.unknown(key, entitlementNames)
	})
	if ok {
		*e = t
	}
	return ok
}

var usageEventNames = []string{"id", "customer_id", "external_customer_id", "billable_metric_key", "units", "cost",
	"balance_after", "created_at"}

func (e *UsageEvent) decodeFast(b []byte) bool {
	t := *e
	r := fastReader{b: b}
	ok := r.object(func(key []byte) bool {
		switch string(key) {
		case "id":
			return r.str(&t.ID)
		case "customer_id":
			return r.str(&t.CustomerID)
		case "external_customer_id":
			return r.str(&t.ExternalCustomerID)
		case "billable_metric_key":
			return r.str(&t.BillableMetricKey)
		case "units":
			return r.int64(&t.Units)
		case "cost":
			return r.int64(&t.Cost)
		case "balance_after":
			return r.int64(&t.BalanceAfter)
		case "created_at":
			q, ok := r.quoted()
			return ok && t.CreatedAt.UnmarshalJSON(q) == nil
		}
		return r.unknown(key, usageEventNames)
	})
	if ok {
		*e = t
	}
	return ok
}
