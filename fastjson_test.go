package quotastack

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The contract's samples, which the fast path must take.
const (
	entitlementSample = `{"allowed": true, "customer_id": "019d6258-07ba-7418-83be-58f5fde53e4e", "external_customer_id": "user_abc",
 "billable_metric_key": "look", "units": 1, "balance": 150000, "reserved_balance": 10000,
 "effective_balance": 140000, "estimated_cost": 1000, "balance_after": 139000,
 "subscription_status": "active", "overage_policy": "block"}`
	usageEventSample = `{"id": "evt_019d6258a1b2", "customer_id": "019d6258-07ba-7418-83be-58f5fde53e4e", "external_customer_id": "user_abc",
 "billable_metric_key": "look", "units": 1, "cost": 1000, "balance_after": 139000, "created_at": "2026-03-01T12:00:00Z"}`
)

// fastCases are inputs around the edges of the fast path: ent and usage say
// whether Entitlement's and UsageEvent's take them themselves (the rest go to
// encoding/json). A member that is no field of a type is skipped by it.
var fastCases = []struct {
	name       string
	in         string
	ent, usage bool
}{
	{"entitlement sample", entitlementSample, true, true},
	{"usage sample", usageEventSample, true, true},
	{"empty object", `{}`, true, true},
	{"white space around", " \t\r\n{ \"units\" : 3 , \"id\":\"e\" } \n", true, true},
	{"unknown members of every kind", `{"units": 2, "x": {"a": [1, -2.5e+3, true, null, "\u00e9\n"], "b": {}}, "y": [], "z": "ok"}`, true, true},
	{"duplicate member: the last wins", `{"units": 1, "units": 7}`, true, true},
	{"negative and extreme integers", `{"balance": -9223372036854775808, "units": 9223372036854775807, "cost": -0}`, true, true},
	{"UTF-8 in a string", `{"customer_id": "cüstomer-日本"}`, true, true},
	{"a field's name in another case", `{"Units": 5}`, false, false},
	{"an escaped key", `{"\u0075nits": 5}`, false, false},
	{"a non-ASCII key", `{"unitſ": 5}`, false, false},
	{"an escaped string value", `{"customer_id": "a\"b"}`, false, false},
	{"invalid UTF-8", "{\"customer_id\": \"a\xffb\"}", false, false},
	{"a control character in a string", "{\"customer_id\": \"a\tb\"}", false, false},
	{"null", `{"units": null}`, false, false},
	{"a float for an integer", `{"units": 1.0}`, false, false},
	{"an exponent for an integer", `{"units": 1e2}`, false, false},
	{"an overflowing integer", `{"units": 9223372036854775808}`, false, false},
	{"an underflowing integer", `{"units": -9223372036854775809}`, false, false},
	{"a leading zero", `{"units": 01}`, false, false},
	{"a string for a bool", `{"allowed": "true"}`, false, true},
	{"a bool for a string", `{"customer_id": true}`, false, false},
	{"a bad time", `{"created_at": "yesterday"}`, true, false},
	{"trailing bytes", `{"units": 1} x`, false, false},
	{"two objects", `{}{}`, false, false},
	{"an array", `[]`, false, false},
	{"truncated", `{"units": 1`, false, false},
	{"a missing colon", `{"units" 1}`, false, false},
	{"a trailing comma", `{"units": 1,}`, false, false},
	{"bytes glued to a literal", `{"allowed": truex}`, false, false},
	{"bytes glued to a number", `{"units": 12a}`, false, false},
	{"deep unknown nesting", `{"x": ` + deep(40) + `}`, false, false},
	{"a bad escape in an unknown member", `{"x": "\q"}`, false, false},
	{"a short unicode escape in an unknown member", `{"x": "\u12"}`, false, false},
	{"a bad number in an unknown member", `{"x": 1.}`, false, false},
	{"a bare minus in an unknown member", `{"x": -}`, false, false},
	{"a bad literal in an unknown member", `{"x": nul}`, false, false},
}

func deep(n int) string {
	s := "1"
	for range n {
		s = "[" + s + "]"
	}
	return s
}

// TestFastDecode checks every case both ways: what the fast path takes, it
// decodes exactly as encoding/json; what it leaves, it leaves untouched.
func TestFastDecode(t *testing.T) {
	t.Parallel()
	for _, tc := range fastCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			kinds := []struct {
				fresh func() fastDecoder
				taken bool
			}{
				{func() fastDecoder { return new(Entitlement) }, tc.ent},
				{func() fastDecoder { return new(UsageEvent) }, tc.usage},
			}
			for _, k := range kinds {
				got := k.fresh()
				taken := got.decodeFast([]byte(tc.in))
				assert.Equal(t, k.taken, taken, "%T: taken by the fast path", got)
				if !taken {
					assert.Equal(t, k.fresh(), got, "%T: a declined input leaves the value as it was", got)
					continue
				}
				want := k.fresh()
				require.NoError(t, json.Unmarshal([]byte(tc.in), want))
				assert.Equal(t, want, got, "%T: decoded as encoding/json does", got)
			}
		})
	}
}

// TestFastDecodeSamples: the contract's answers a gate reads take the fast
// path and come out as encoding/json makes them.
func TestFastDecodeSamples(t *testing.T) {
	t.Parallel()
	var e, ej Entitlement
	require.True(t, e.decodeFast([]byte(entitlementSample)))
	require.NoError(t, json.Unmarshal([]byte(entitlementSample), &ej))
	assert.Equal(t, ej, e)
	assert.True(t, e.Allowed)
	assert.Equal(t, int64(139000), e.BalanceAfter)

	var u, uj UsageEvent
	require.True(t, u.decodeFast([]byte(usageEventSample)))
	require.NoError(t, json.Unmarshal([]byte(usageEventSample), &uj))
	assert.Equal(t, uj, u)
	assert.Equal(t, "evt_019d6258a1b2", u.ID)
	assert.True(t, u.CreatedAt.Equal(uj.CreatedAt))
}

// FuzzFastDecode is a differential fuzz: whenever the fast path takes an
// input, encoding/json must accept it too and decode the same values; when it
// declines, the value must be untouched. Values start non-zero so that a
// member the input lacks must keep its old value, as encoding/json keeps it.
func FuzzFastDecode(f *testing.F) {
	for _, tc := range fastCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		seedE := Entitlement{Allowed: true, CustomerID: "old", Units: 9, BalanceAfter: -4}
		seedU := UsageEvent{ID: "old", Cost: 3}
		checkFast(t, in, &seedE, func() fastDecoder { v := seedE; return &v })
		checkFast(t, in, &seedU, func() fastDecoder { v := seedU; return &v })
	})
}

func checkFast(t *testing.T, in []byte, seed fastDecoder, fresh func() fastDecoder) {
	got := fresh()
	if !got.decodeFast(in) {
		if !reflect.DeepEqual(got, seed) {
			t.Fatalf("declined %q but changed the value to %+v", in, got)
		}
		return
	}
	want := fresh()
	if err := json.Unmarshal(in, want); err != nil {
		t.Fatalf("fast path took %q, encoding/json refuses it: %v", in, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: fast path %+v, encoding/json %+v", in, got, want)
	}
}
