package autobuy_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// Found by the reliability soak (gates of every mode on one shared
// ChargeLog): a Gatekeeper without lease mode meets a lease of another
// Gatekeeper on the same ChargeLog (replicas sharing it, or two Gatekeepers
// of one process on the default) when the customer's credits are held by
// that lease. It must serve the action from the lease, or settle it and
// check again; never panic, never buy a plan the customer didn't need.
func TestGateWithoutLeaseModeMeetsALease(t *testing.T) {
	t.Parallel()
	for _, m := range chargeModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range []struct {
				name string
				opts []autobuy.GateOption
			}{
				{"per-action gate", nil},
				{"two-phase hold", []autobuy.GateOption{autobuy.WithReservation(time.Minute)}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					w := setup(t, 250_000, m.opts...)
					w.grantPlanCredits(t, 50_000)
					shared := newStores()
					leased := w.gate(t, append(shared.opts(), leaseOf(50))...)
					plain := w.gate(t, shared.opts()...)
					d := w.gateNoted(t, leased, w.cust, "l1") // the lease holds all 50 actions' credits
					require.True(t, d.Leased)
					for i := range 10 {
						d := w.gateNoted(t, plain, w.cust, fmt.Sprint("p", i), tc.opts...)
						assert.True(t, d.Allowed, "p%d: %s", i, d.Reason)
						assert.Nil(t, d.Purchase, "p%d: no plan bought while the lease holds credits", i)
						if d.Hold != nil {
							require.NoError(t, plain.Settle(context.Background(), d, true, 0))
						}
					}
					require.NoError(t, leased.Close(context.Background()))
					require.NoError(t, plain.Close(context.Background()))
					assert.Zero(t, w.planGrants(), "no plan bought: the customer had credits")
					assert.Equal(t, int64(11_000), w.chargedChatMC())
				})
			}
		})
	}
}

// Found by the reliability soak: a lease gate that claimed an event for a
// lease and then could not get one (the reserve met an outage: a rate limit,
// 5xxs) returned the error and left the event claimed "via lease". The
// retry of the event waited for that claim and answered it as let through on
// a lease: allowed, never counted, never charged. Nothing was counted, so
// the retry must charge it.
func TestLeaseOutageThenRetryIsCharged(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		g := w.gate(t, leaseOf(10))
		w.gateNoted(t, g, w.cust, "m0") // resolves the customer, reserves a lease
		require.NoError(t, g.Flush(context.Background()))
		w.srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/reserve", Status: http.StatusServiceUnavailable, Count: 50})
		_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.Error(t, err, "no lease and no check to be had")
		w.srv.ClearFaults()
		start := time.Now()
		d := w.gateNoted(t, g, w.cust, "m1") // the caller repeats the event
		assert.True(t, d.Allowed)
		assert.False(t, d.Replayed, "nothing was counted for m1: it is gated anew")
		assert.Less(t, time.Since(start), 900*time.Millisecond, "no wait for a lease claim nobody holds")
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, int64(2_000), w.chargedChatMC(), "m0 and m1, once each")
	})
}

// Found by the reliability soak (two-phase middleware, a replica that died
// after its commit executed): the hold of an event was committed but the
// answer lost; the event's retry got the hold back from the record, its
// handler failed, and the release found the hold no longer active. The
// record was voided as if released, and the next retry held and committed
// the event again: charged twice. The record is "committing" from before the
// commit is sent: a retry resends that hold, its release leaves the record
// as it is, and a later commit under the same key settles it.
func TestTwoPhaseReleaseAfterALostCommitKeepsTheCharge(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		g := w.gate(t)
		hold := autobuy.WithReservation(time.Minute)
		d := w.gateNoted(t, g, w.cust, "m1", hold)
		require.NotNil(t, d.Hold)
		w.srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/reserve/" + d.Hold.ID + "/commit", Drop: true, Count: 50})
		require.Error(t, g.Settle(context.Background(), d, true, 0), "the commit executed, its answer lost")
		w.srv.ClearFaults()

		retry := w.gateNoted(t, g, w.cust, "m1", hold) // the client retries: the record has the hold
		require.NotNil(t, retry.Hold)
		assert.Equal(t, d.Hold.ID, retry.Hold.ID, "the hold whose commit is under way, resent")
		require.NoError(t, g.Settle(context.Background(), retry, false, 0), "the retry's work failed: release")

		again := w.gateNoted(t, g, w.cust, "m1", hold) // and the client retries once more
		if again.Hold != nil {
			require.NoError(t, g.Settle(context.Background(), again, true, 0))
		}
		assert.Equal(t, int64(1_000), w.chargedChatMC(), "one message, charged once")
	})
}

// Found by the reliability soak (two-phase middleware at the rate limit):
// the handler did the work and answered 200, and the commit met an outage
// past the client's retries (a 429 whose Retry-After the client would not
// wait for, 5xxs). The hold was left to expire: an action done and never
// charged. The middleware retries a settle QuotaStack could not answer
// until its settle time runs out.
func TestTwoPhaseCommitRetriedPastAnOutage(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		g := w.gate(t)
		var settleErr error
		settled := false
		next := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			// The work is done; meanwhile QuotaStack stops answering commits for a while.
			w.srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/reserve/", Status: http.StatusServiceUnavailable, Count: 12})
			w.srv.NoteAllowed(user, "chat_message", "m1", 1)
			_, _ = rw.Write([]byte("done"))
		})
		h := autobuy.Middleware(g, func(r *http.Request) (autobuy.Action, error) {
			return autobuy.Action{Customer: w.cust, Metric: "chat_message", EventID: "m1"}, nil
		}, autobuy.TwoPhase(time.Minute), autobuy.OnSettle(func(_ *http.Request, _ autobuy.Decision, committed bool, err error) {
			settled, settleErr = committed, err
		}))(next)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/chat", strings.NewReader("hi")))
		require.Equal(t, http.StatusOK, rec.Code)
		assert.True(t, settled)
		assert.NoError(t, settleErr)
		assert.Equal(t, int64(1_000), w.chargedChatMC(), "the work done is charged")
	})
}

// Found by the reliability soak: an event whose usage record executed but
// whose answer was lost stays claimed (pending) under its usage key. Its
// retry checked first; the check refused (the lost record had spent the
// credits), and the gate served it from another Gatekeeper's lease (charged
// twice) or bought a plan for it (a plan nobody needed). A pending claim
// taken over is resent under its key first (to a server seen to debit
// synchronously): the server's stored answer decides.
func TestPendingUsageIsResentBeforeTheCheck(t *testing.T) {
	t.Parallel()
	for _, m := range chargeModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			t.Run("a lease holds the rest", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 6_000)
				shared := newStores()
				plain := w.gate(t, shared.opts()...)
				leased := w.gate(t, append(shared.opts(), leaseOf(10))...)
				w.gateNoted(t, plain, w.cust, "m0") // the server answers usage synchronously
				w.srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/usage", Drop: true, Count: 50})
				_, err := plain.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("e"))
				require.Error(t, err, "the record executed, its answer lost")
				w.srv.ClearFaults()
				w.gateNoted(t, leased, w.cust, "a1") // a lease of the 4 actions left
				d := w.gateNoted(t, plain, w.cust, "e")
				assert.True(t, d.Allowed)
				assert.False(t, d.Leased, "e was charged by its own record")
				require.NoError(t, leased.Close(context.Background()))
				assert.Equal(t, int64(3_000), w.chargedChatMC(), "m0, e and a1, once each")
			})
			t.Run("the credits ran out", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 2_000)
				g := w.gate(t)
				w.gateNoted(t, g, w.cust, "m0") // the server answers usage synchronously
				w.srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/usage", Drop: true, Count: 50})
				_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("e"))
				require.Error(t, err, "the record executed, its answer lost")
				w.srv.ClearFaults()
				d := w.gateNoted(t, g, w.cust, "e")
				assert.True(t, d.Allowed)
				assert.Nil(t, d.Purchase, "no plan for an action already paid")
				assert.Zero(t, w.planGrants())
				assert.Equal(t, int64(2_000), w.chargedChatMC())
			})
		})
	}
}

// Found by the reliability soak: a lease reserved by another Gatekeeper
// between a gate's settle-and-check and its record took the credits back;
// the record met a 402, and the purchase path bought a plan while the new
// lease held the customer's credits. The check after a settle runs under the
// lease lock, and under the purchase lock a lease found is settled and the
// customer checked again.
func TestLeaseReservedBeforeThePurchaseIsSettledNotBoughtAround(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 10_000, func(t *testing.T, w *world) {
		shared := newStores()
		leased := w.gate(t, append(shared.opts(), leaseOf(50))...)
		w.gateNoted(t, leased, w.cust, "l1") // a lease of the 10 actions' credits
		// The lease is being committed (no action is taken from it now).
		l, found, err := shared.charges.Lease(context.Background(), w.uuid(t), "chat_message")
		require.NoError(t, err)
		require.True(t, found)
		l.Committing = true
		require.NoError(t, shared.charges.PutLease(context.Background(), &l))
		var armed sync.Once
		hooked, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL),
			quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond),
			quotastack.WithTransport(roundTrip(func(r *http.Request) (*http.Response, error) {
				if r.Method == http.MethodPost && r.URL.Path == "/v1/usage" {
					// Just before this gate's record, the other Gatekeeper
					// gates an action: it reserves a new lease of what is left
					// (or waits for the lease lock).
					armed.Do(func() {
						done := make(chan struct{})
						go func() {
							defer close(done)
							w.gateNoted(t, leased, w.cust, "l2")
						}()
						select {
						case <-done:
						case <-time.After(300 * time.Millisecond):
						}
					})
				}
				return http.DefaultTransport.RoundTrip(r)
			})))
		require.NoError(t, err)
		plain, err := autobuy.New(hooked, append(shared.opts(), autobuy.WithPlan(hourPlan))...)
		require.NoError(t, err)
		d := w.gateNoted(t, plain, w.cust, "p1")
		assert.True(t, d.Allowed, "%s", d.Reason)
		assert.Nil(t, d.Purchase, "no plan bought while a lease holds credits")
		require.Eventually(t, func() bool {
			_, err := leased.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("l2"))
			return err == nil // l2 decided (a replay once its first gate is through)
		}, 5*time.Second, 10*time.Millisecond)
		require.NoError(t, leased.Close(context.Background()))
		assert.Zero(t, w.planGrants())
		assert.Equal(t, int64(3_000), w.chargedChatMC(), "l1, l2 and p1")
	})
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Found by the reliability soak in CI (record-first, a replica that died
// after its usage record executed): the event's record was left pending on a
// usage key whose answer was lost. Its retry, on a Gatekeeper that had not
// yet seen a synchronous usage answer, checked first; the check counted the
// event's own charge and refused it, and the gate served it from another
// Gatekeeper's lease: charged twice. The same refused check could buy a plan
// for it, or deny it (voided, so a later retry charges it again under the
// next key). A refused check never decides such an event: its usage key is
// resent first, and the server's answer (a replay: it was charged) decides.
func TestLostUsageAnswerThenRefusedCheckResendsTheKey(t *testing.T) {
	t.Parallel()
	modes := append([]struct {
		name string
		opts []quotastacktest.Option
	}{{"usage 202", []quotastacktest.Option{quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{})}}}, chargeModes...)
	for _, m := range modes {
		for _, tc := range []struct {
			name             string
			walletMC, planMC int64
			lease            bool // another Gatekeeper holds the rest of the plan credits on a lease
		}{
			{"a lease holds the rest of the credits", 250_000, 3_000, true},
			{"the wallet can buy a plan", 250_000, 1_000, false},
			{"the wallet is empty", 0, 1_000, false},
		} {
			t.Run(m.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				w := setup(t, tc.walletMC, m.opts...)
				w.grantPlanCredits(t, tc.planMC)
				shared := newStores()
				plain := w.gate(t, shared.opts()...) // has seen no usage answer yet
				w.srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/usage", Drop: true, Count: 50})
				_, err := plain.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
				require.Error(t, err, "the record executed, its answer lost")
				w.srv.ClearFaults()
				var leased *autobuy.Gatekeeper
				if tc.lease {
					leased = w.gate(t, append(shared.opts(), leaseOf(50))...)
					d := w.gateNoted(t, leased, w.cust, "l1") // a lease of what is left: 2 actions
					require.True(t, d.Leased)
				}

				d := w.gateNoted(t, plain, w.cust, "m1") // the caller repeats the event
				assert.True(t, d.Allowed, "m1 was charged: the customer paid (%s)", d.Reason)
				assert.False(t, d.Leased, "m1 was charged by its usage record, not on a lease")
				assert.Nil(t, d.Purchase, "no plan bought for an action already paid")
				if leased != nil {
					require.NoError(t, leased.Close(context.Background()))
				}
				assert.Zero(t, w.planGrants())
				want := int64(1_000)
				if tc.lease {
					want = 2_000 // m1 and l1
				}
				assert.Equal(t, want, w.chargedChatMC(), "every action charged once")
			})
		}
	}
}

// sendHook is a ChargeLog that runs fn (once) when a record is first marked
// pending, before the write: a concurrent gate of the same event slipped in
// between this gate's claim and its request.
type sendHook struct {
	autobuy.ChargeLog
	ran atomic.Bool
	fn  func()
}

func (h *sendHook) PutCharge(ctx context.Context, c *autobuy.Charge) error {
	if c.State == autobuy.ChargePending && h.ran.CompareAndSwap(false, true) {
		h.fn()
	}
	return h.ChargeLog.PutCharge(ctx, c)
}

// Two gates of one event at once (a client that retries while its first
// call is still running): the second takes over the first's claim, which
// has sent nothing yet, and charges the event; the first finds the record
// moved when it marks its request pending and answers from the record. One
// usage record, never two.
func TestConcurrentGatesOfOneEventChargeOnce(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		log := &sendHook{ChargeLog: autobuy.NewMemoryChargeLog(0)}
		first := w.gate(t, autobuy.WithChargeLog(log))
		second := w.gate(t, autobuy.WithChargeLog(log))
		var inner autobuy.Decision
		log.fn = func() { inner = w.gateNoted(t, second, w.cust, "m1") }
		d := w.gateNoted(t, first, w.cust, "m1")
		assert.True(t, inner.Allowed)
		assert.False(t, inner.Replayed, "the second gate charged it")
		assert.True(t, d.Allowed)
		assert.True(t, d.Replayed, "the first answers from the record")
		assert.Len(t, w.usageFor("chat_message"), 1)
		assert.Equal(t, int64(1_000), w.chargedChatMC())
	})
}

// drainOnActivate is a ChargeLog on which other gates take every unit of a
// lease the moment it is activated, before the gate that reserved it looks.
type drainOnActivate struct {
	autobuy.ChargeLog
	drained atomic.Int64
}

var drainTakes atomic.Int64 // ids of drainOnActivate's takes

func (d *drainOnActivate) PutLease(ctx context.Context, l *autobuy.Lease) error {
	activating := l.Rev > 0 && !l.Committing && !strings.HasPrefix(l.ReservationID, "reserving:")
	if err := d.ChargeLog.PutLease(ctx, l); err != nil || !activating {
		return err
	}
	for {
		_, ok, err := d.TakeLease(ctx, l.CustomerID, l.Metric, 1, time.Now(), fmt.Sprint("drain-", drainTakes.Add(1)))
		if err != nil || !ok {
			return err
		}
		d.drained.Add(1)
	}
}

// Found by the request-economy benchmark (lease mode, 64 goroutines on hot
// customers): the gate that settled a full lease and reserved the next one
// then raced every waiting gate for its units, and could lose them all and
// renew again, past its deadline. Its action is counted on the lease in the
// write that activates it: a gate that renews is served by its renewal.
func TestTheGateThatRenewsALeaseIsServedFromIt(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		log := &drainOnActivate{ChargeLog: autobuy.NewMemoryChargeLog(0)}
		g := w.gate(t, autobuy.WithChargeLog(log), leaseOf(10))
		d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.True(t, d.Leased, "served by the lease it reserved")
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, int64(9), log.drained.Load(), "the others got the rest")
		assert.Equal(t, int64(10_000), w.chargedChatMC(), "the lease's 10 units, committed once")
	})
}

// Found by the request-economy benchmark (lease mode, 64 goroutines with
// context.Background()): a gate that found the lease full sent its commit,
// and the client's default timeout of the gate ran out before its reserve.
// A renewal is finished as a purchase is, within the purchase timeout, when
// the caller gave no deadline; a caller's own deadline is kept.
func TestLeaseRenewalOutlivesTheDefaultTimeoutNotTheCallersDeadline(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		var slow atomic.Bool
		c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL),
			quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond), quotastack.WithTimeout(300*time.Millisecond),
			quotastack.WithTransport(roundTrip(func(r *http.Request) (*http.Response, error) {
				if slow.Load() && r.Method == http.MethodPost && r.URL.Path == "/v1/reserve" {
					select {
					case <-time.After(400 * time.Millisecond):
					case <-r.Context().Done():
						return nil, r.Context().Err()
					}
				}
				return http.DefaultTransport.RoundTrip(r)
			})))
		require.NoError(t, err)
		g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithChargeLog(autobuy.NewMemoryChargeLog(0)), leaseOf(2))
		require.NoError(t, err)
		w.gateNoted(t, g, w.cust, "m1") // a lease of 2 actions
		w.gateNoted(t, g, w.cust, "m2")
		slow.Store(true) // reserves now take longer than the client's default timeout

		d := w.gateNoted(t, g, w.cust, "m3") // the lease is full: commit, then the slow reserve
		assert.True(t, d.Leased, "served by the renewed lease")
		w.gateNoted(t, g, w.cust, "m4")

		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = g.Gate(ctx, w.cust, "chat_message", autobuy.WithEventID("m5"))
		require.Error(t, err, "the caller's own deadline is kept")
		assert.Less(t, time.Since(start), 390*time.Millisecond)

		slow.Store(false)
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, int64(4_000), w.chargedChatMC(), "m1 to m4, once each")
	})
}
