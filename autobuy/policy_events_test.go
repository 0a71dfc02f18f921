package autobuy_test

// The gate policy of issue 16, events and keys: an event is recorded once
// after any number of refusals, the gate's keys never collide with a
// caller's event ids, and customers sharing an event id each pay for their
// own action.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// gateStyles are the two ways a Gatekeeper gates an entitled action: check
// then record (the default), or record first (WithRecordFirst), which uses
// the event's keys before any check. Record-first gates pass the customer by
// its QuotaStack id, so that the first gate records first too.
var gateStyles = []struct {
	name string
	opts []autobuy.Option
}{{"check-first", nil}, {"record-first", []autobuy.Option{autobuy.WithRecordFirst()}}}

// styledGate returns a gate of the style; a record-first one is armed first
// by a synchronous usage answer (where the server gives one).
func (w *world) styledGate(t *testing.T, style string, opts ...autobuy.Option) *autobuy.Gatekeeper {
	t.Helper()
	g := w.gate(t, opts...)
	if style == "record-first" {
		tryArmRecordFirst(t, w, g)
	}
	return g
}

func (w *world) customerFor(t *testing.T, style string, ext string) quotastack.Customer {
	t.Helper()
	if style == "record-first" {
		return quotastack.CustomerID(w.customerID(t, ext))
	}
	return quotastack.ExternalID(ext)
}

// Case 4: any number of refused attempts (stored 402s) before a record still
// lets a later gate of that event record it, exactly once, through the
// entitled path and through an auto-buy. usage202 is skipped: there the server
// never answers 402 (it accepts and rejects later).
func TestEventIsRecordedOnceAfterAnyNumberOf402s(t *testing.T) {
	t.Parallel()
	for _, refused := range []int{1, 2, 5} {
		for _, path := range []string{"entitled", "auto-buy"} {
			for _, style := range gateStyles {
				t.Run(fmt.Sprintf("%d refused/%s/%s", refused, path, style.name), func(t *testing.T) {
					t.Parallel()
					runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
						t.Parallel()
						w := setup(t, 0, mode.Options...)
						cid := w.customerID(t, user)
						c := w.client(t)
						for n := 1; n <= refused; n++ {
							_, err := c.Record(context.Background(), quotastack.UsageParams{Customer: quotastack.CustomerID(cid), MetricKey: "chat_message", Units: 1},
								quotastack.WithIdempotencyKey(usageKeyOf(cid, "e", n)))
							require.ErrorIs(t, err, quotastack.ErrInsufficientCredits, "attempt %d refused and stored", n)
						}
						want := autobuy.ReasonEntitled
						if path == "entitled" {
							w.grantPlanCredits(t, 5_000)
						} else {
							_, err := w.srv.Grant(user, quotastacktest.BlockSpec{Credits: 250_000})
							require.NoError(t, err)
							want = autobuy.ReasonAutoBought
						}
						wantKey := refused + 1
						if path == "auto-buy" && style.name == "record-first" {
							wantKey++ // the record sent first is refused too: that key is never reused
						}
						g := w.styledGate(t, style.name, style.opts...)
						cust := w.customerFor(t, style.name, user)
						for i := range 3 {
							d, err := g.Gate(context.Background(), cust, "chat_message", autobuy.WithEventID("e"))
							require.NoError(t, err)
							assert.True(t, d.Allowed, "gate %d", i)
							if i == 0 {
								assert.Equal(t, want, d.Reason)
							}
							chat := w.usageFor("chat_message")
							require.Len(t, chat, 1, "recorded exactly once (gate %d)", i)
							assert.Equal(t, usageKeyOf(cid, "e", wantKey), chat[0].IdempotencyKey)
						}
						assert.LessOrEqual(t, w.planGrants(), 1)
					}, "usage202")
				})
			}
		}
	}
}

// Case 4, concurrently: gates of one event race gates of other events for
// three actions' credits (so some of the event's attempts are refused); the
// event is charged at most once, and once credits come back a later gate of
// it records it exactly once.
func TestConcurrentGatesOfOneEventChargeItOnce(t *testing.T) {
	t.Parallel()
	for _, style := range gateStyles {
		t.Run(style.name, func(t *testing.T) {
			t.Parallel()
			runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				w := setup(t, 0, mode.Options...)
				w.srv.SetLatency(time.Millisecond)
				w.grantPlanCredits(t, 3_000)
				cid := w.customerID(t, user)
				g := w.styledGate(t, style.name, style.opts...)
				cust := w.customerFor(t, style.name, user)
				var calls []func() (autobuy.Decision, error)
				for i := range 16 {
					ev := "e"
					if i%2 == 1 {
						ev = fmt.Sprintf("x_%d", i)
					}
					calls = append(calls, func() (autobuy.Decision, error) {
						return g.Gate(context.Background(), cust, "chat_message", autobuy.WithEventID(ev))
					})
				}
				allowedX := 0
				for i, r := range gateTogether(calls...) {
					require.NoError(t, r.err)
					if r.d.Allowed && i%2 == 1 {
						allowedX++
					}
				}
				ofE := func() int {
					n := 0
					for _, u := range w.usageFor("chat_message") {
						if strings.HasPrefix(u.IdempotencyKey, usageKeyOf(cid, "e", 1)) {
							n++
						}
					}
					return n
				}
				assert.LessOrEqual(t, ofE(), 1, "one event, at most one charge")
				assert.Equal(t, allowedX+ofE(), len(w.usageFor("chat_message")))
				refusedKeys := map[string]bool{}
				for _, r := range w.srv.Requests() {
					if r.Status == http.StatusPaymentRequired && strings.HasPrefix(r.IdempotencyKey, usageKeyOf(cid, "e", 1)) {
						refusedKeys[r.IdempotencyKey] = true
					}
				}
				t.Logf("event e: %d keys refused with 402", len(refusedKeys))

				w.srv.SetLatency(0)
				w.grantPlanCredits(t, 5_000)
				d, err := g.Gate(context.Background(), cust, "chat_message", autobuy.WithEventID("e"))
				require.NoError(t, err)
				assert.True(t, d.Allowed)
				assert.Equal(t, 1, ofE(), "recorded exactly once")
			}, "usage202", "rate-limited")
		})
	}
}

// Case 4, on a server whose answers are lost after the commit: the record's
// 402 comes back as a replay of the gate's own first attempt. That is a fresh
// refusal (the credits went to a concurrent action), not an earlier gate's:
// the gate buys and records under the event's next key, instead of walking
// keys (two requests each) until it gives up.
func TestOwnReplayed402IsAFreshRefusal(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000, quotastacktest.WithExecuteThenStatus(500))
	w.grantPlanCredits(t, 1_000)
	cid := w.customerID(t, user)
	other := w.client(t)
	tr := &spendFirst{next: http.DefaultTransport, spend: func() {
		_, err := other.Record(context.Background(), quotastack.UsageParams{Customer: w.cust, MetricKey: "chat_message", Units: 1})
		assert.NoError(t, err)
	}}
	g, err := autobuy.New(w.clientWith(t, w.srv.APIKey, tr), autobuy.WithPlan(hourPlan))
	require.NoError(t, err)

	d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("msg_race"))
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
	assert.Equal(t, 1, w.planGrants())
	chat := w.usageFor("chat_message")
	require.Len(t, chat, 2, "the spender's and ours")
	assert.Equal(t, usageKeyOf(cid, "msg_race", 2), chat[1].IdempotencyKey)
	keys := map[string]bool{}
	for _, r := range w.srv.Requests() {
		if strings.Contains(r.IdempotencyKey, "msg_race") {
			keys[r.IdempotencyKey] = true
		}
	}
	assert.Len(t, keys, 2, "two keys: the refused attempt and the record")
}

// Case 5: the gate's keys never collide with a caller's event ids: event "m1"
// charged under its second key (after a stored 402) and event "m1:2" are two
// actions, each charged once. (keys_internal_test.go fuzzes the key function.)
func TestGateKeysNeverCollideWithCallersEventIDs(t *testing.T) {
	t.Parallel()
	for _, style := range gateStyles {
		t.Run(style.name, func(t *testing.T) {
			t.Parallel()
			runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				w := setup(t, 0, mode.Options...)
				cid := w.customerID(t, user)
				_, err := w.client(t).Record(context.Background(), quotastack.UsageParams{Customer: quotastack.CustomerID(cid), MetricKey: "chat_message", Units: 1},
					quotastack.WithIdempotencyKey(usageKeyOf(cid, "m1", 1)))
				require.ErrorIs(t, err, quotastack.ErrInsufficientCredits)
				w.grantPlanCredits(t, 5_000)
				g := w.styledGate(t, style.name, style.opts...)
				cust := w.customerFor(t, style.name, user)
				for _, ev := range []string{"m1", "m1:2", "m1", "m1:2"} {
					d, err := g.Gate(context.Background(), cust, "chat_message", autobuy.WithEventID(ev))
					require.NoError(t, err)
					assert.True(t, d.Allowed, ev)
				}
				chat := w.usageFor("chat_message")
				require.Len(t, chat, 2, "two actions, each charged once")
				assert.Equal(t, usageKeyOf(cid, "m1", 2), chat[0].IdempotencyKey)
				assert.NotEqual(t, chat[0].IdempotencyKey, chat[1].IdempotencyKey)
				assert.Equal(t, int64(3_000), w.srv.Blocks(user)[0].RemainingAmount)
			}, "usage202")
		})
	}
	assert.NotEqual(t, quotastack.ActionGrantKey("user42:companion7", "like"), quotastack.ActionGrantKey("user42", "companion7:like"))
}

// Case 7: two customers send the same event id; each is charged for their
// own action and nobody pays for an action that didn't happen.
func TestTwoCustomersOneEventID(t *testing.T) {
	t.Parallel()
	const alice, bob = "alice", "bob"
	for _, both := range []bool{false, true} {
		name := "alice entitled, bob auto-buys"
		if both {
			name = "both auto-buy"
		}
		for _, style := range gateStyles {
			t.Run(name+"/"+style.name, func(t *testing.T) {
				t.Parallel()
				runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
					t.Parallel()
					w := setup(t, 0, mode.Options...)
					for _, ext := range []string{alice, bob} {
						_, err := w.srv.Grant(ext, quotastacktest.BlockSpec{Credits: 250_000})
						require.NoError(t, err)
					}
					if !both {
						exp := w.clock.Now().Add(time.Hour)
						_, err := w.srv.Grant(alice, quotastacktest.BlockSpec{Credits: 5_000, Priority: 10, ExpiresAt: &exp,
							Metadata: map[string]string{"plan_type": "1hr", "source": "plan_grant"}})
						require.NoError(t, err)
					}
					g := w.styledGate(t, style.name, style.opts...)
					gateAs := func(ext string) func() (autobuy.Decision, error) {
						c := w.customerFor(t, style.name, ext)
						return func() (autobuy.Decision, error) {
							return g.Gate(context.Background(), c, "chat_message", autobuy.WithEventID("msg_1"))
						}
					}
					for round := range 2 { // the second round is both users' retry
						for _, r := range gateTogether(gateAs(alice), gateAs(bob)) {
							require.NoError(t, r.err)
							assert.True(t, r.d.Allowed, "round %d: %s", round, r.d.Reason)
						}
					}
					w.srv.FlushAsyncUsage()
					for _, ext := range []string{alice, bob} {
						assert.Len(t, usageOf(w.srv, ext, "chat_message"), 1, "%s charged once for msg_1", ext)
						wantPlans := 1
						if ext == alice && !both {
							wantPlans = 0
						}
						assert.Equal(t, wantPlans, plansOf(w.srv, ext), ext)
						assert.Equal(t, wantPlans, debitsOf(w.srv, ext), ext)
						assert.Equal(t, int64(250_000-wantPlans*100_000), walletOf(w.srv, ext), ext)
					}
				}, skipFor(style.name)...)
			})
		}
	}
}

// skipFor returns the modes a style's money scenario can't hold on: with
// record-first, a server that answers usage 202 lets the first record(s) of
// a Gatekeeper through on an accepted, unconfirmed debit (as WithRecordFirst
// documents: if the server later rejects it, the action was free), so "each
// action charged once" can't hold there.
func skipFor(style string) []string {
	if style == "record-first" {
		return []string{"usage202"}
	}
	return nil
}
