package autobuy_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// The scenarios of "every action charged exactly once, in every mode": each
// runs against the fake in its kind mode and in unkind ones, and the fake's
// CheckInvariants (run at the end of setup's world) compares the actions the
// test saw allowed with what was charged.

// chargeModes are the fake's modes the scenarios run in.
var chargeModes = []struct {
	name string
	opts []quotastacktest.Option
}{
	{"kind", nil},
	{"sparse answers", []quotastacktest.Option{quotastacktest.WithSparseAnswers()}},
	{"execute then 503", []quotastacktest.Option{quotastacktest.WithExecuteThenStatus(503)}},
}

// gateNoted gates one chat message and tells the fake when it was allowed.
func (w *world) gateNoted(t *testing.T, g *autobuy.Gatekeeper, cust quotastack.Customer, event string, opts ...autobuy.GateOption) autobuy.Decision {
	t.Helper()
	d, err := g.Gate(context.Background(), cust, "chat_message", append([]autobuy.GateOption{autobuy.WithEventID(event)}, opts...)...)
	require.NoError(t, err, "event %s", event)
	if d.Allowed && !d.Fallback {
		w.srv.NoteAllowed(user, "chat_message", event, 1)
	}
	return d
}

// uuid returns the customer's QuotaStack id.
func (w *world) uuid(t *testing.T) string {
	t.Helper()
	acct, ok := w.srv.Account(user)
	require.True(t, ok)
	return acct.CustomerID
}

// stores is what replicas share: journal, locker and charge log.
type stores struct {
	journal autobuy.Journal
	locker  autobuy.Locker
	charges autobuy.ChargeLog
}

func newStores() stores {
	return stores{autobuy.NewMemoryJournal(0), autobuy.NewLocalLocker(), autobuy.NewMemoryChargeLog(0)}
}

func (s stores) opts() []autobuy.Option {
	return []autobuy.Option{autobuy.WithJournal(s.journal), autobuy.WithLocker(s.locker), autobuy.WithChargeLog(s.charges)}
}

// inChargeModes runs f in parallel once per chargeMode, on a world with a
// 250,000 mc wallet and planMC of plan credits.
func inChargeModes(t *testing.T, planMC int64, f func(t *testing.T, w *world)) {
	t.Helper()
	for _, m := range chargeModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000, m.opts...)
			w.grantPlanCredits(t, planMC)
			f(t, w)
		})
	}
}

func leaseOf(n int64) autobuy.Option {
	return autobuy.WithLease(autobuy.LeaseConfig{Actions: n, Linger: time.Hour})
}

func TestLeaseChargesEveryActionOnce(t *testing.T) {
	t.Parallel()
	for _, m := range chargeModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			t.Run("1 rollover: an event retried after its lease committed", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 50_000)
				g := w.gate(t, leaseOf(5))
				for i := range 5 {
					w.gateNoted(t, g, w.cust, fmt.Sprint("m", i))
				}
				w.gateNoted(t, g, w.cust, "m5") // the lease is full: it commits, a new one serves m5
				d := w.gateNoted(t, g, w.cust, "m0")
				assert.True(t, d.Allowed)
				assert.True(t, d.Replayed, "m0 was charged on the first lease")
				require.NoError(t, g.Close(context.Background()))
				assert.Equal(t, int64(6_000), w.chargedChatMC())
			})
			t.Run("2 two id forms: one lease, one charge", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 50_000)
				g := w.gate(t, leaseOf(10))
				uuid := quotastack.CustomerID(w.uuid(t))
				w.gateNoted(t, g, w.cust, "m1")
				w.gateNoted(t, g, uuid, "m1")
				w.gateNoted(t, g, uuid, "m2")
				w.gateNoted(t, g, w.cust, "m2")
				require.NoError(t, g.Close(context.Background()))
				assert.Equal(t, int64(2_000), w.chargedChatMC())
			})
			t.Run("3 lease, then the per-action path: a retried event is not charged again", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 10_000) // ten messages of plan credits; the wallet buys more
				g := w.gate(t, leaseOf(10))
				for i := range 10 {
					w.gateNoted(t, g, w.cust, fmt.Sprint("m", i))
				}
				// The lease is spent: m10 commits it, gets no new one, and buys a plan per action.
				w.gateNoted(t, g, w.cust, "m10")
				for i := range 10 { // every earlier message retried
					d := w.gateNoted(t, g, w.cust, fmt.Sprint("m", i))
					assert.True(t, d.Replayed, "m%d", i)
				}
				require.NoError(t, g.Close(context.Background()))
				assert.Equal(t, int64(11_000), w.chargedChatMC(), "11 messages")
				assert.Equal(t, 1, w.planGrants(), "one plan for the eleventh")
			})
			t.Run("4 credits held by a lease never make another replica buy", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 50_000)
				shared := newStores()
				a := w.gate(t, append(shared.opts(), leaseOf(50))...)
				b := w.gate(t, append(shared.opts(), leaseOf(50))...)
				w.gateNoted(t, a, w.cust, "a1") // A's lease holds all 50 actions' credits
				for i := range 10 {
					d := w.gateNoted(t, b, w.cust, fmt.Sprint("b", i))
					assert.True(t, d.Allowed)
				}
				require.NoError(t, a.Close(context.Background()))
				require.NoError(t, b.Close(context.Background()))
				assert.Zero(t, w.planGrants(), "no plan bought: the customer had credits")
				assert.Equal(t, int64(11_000), w.chargedChatMC())
			})
			t.Run("4 the same in one process with two id forms", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 50_000)
				g := w.gate(t, leaseOf(50))
				uuid := quotastack.CustomerID(w.uuid(t))
				w.gateNoted(t, g, w.cust, "x1")
				for i := range 10 {
					w.gateNoted(t, g, uuid, fmt.Sprint("u", i))
				}
				require.NoError(t, g.Close(context.Background()))
				assert.Zero(t, w.planGrants())
				assert.Equal(t, int64(11_000), w.chargedChatMC())
			})
			t.Run("4 after a crash the restarted process finds the dead lease", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 50_000)
				durable := newStores() // a shared store survives the process
				dead := w.gate(t, append(durable.opts(), leaseOf(50))...)
				// (Its background committer is stopped at the end; by then the
				// new process has settled the lease, so it finds nothing to commit.)
				t.Cleanup(func() { assert.NoError(t, dead.Close(context.Background())) })
				for i := range 3 {
					w.gateNoted(t, dead, w.cust, fmt.Sprint("d", i))
				}
				// The process dies here: no Close. A new one starts on the same store.
				g := w.gate(t, append(durable.opts(), leaseOf(50))...)
				for i := range 10 {
					w.gateNoted(t, g, w.cust, fmt.Sprint("r", i))
				}
				w.gateNoted(t, g, w.cust, "d1") // a replay of an action of the dead process
				require.NoError(t, g.Close(context.Background()))
				assert.Zero(t, w.planGrants(), "the dead lease's credits were not a reason to buy")
				assert.Equal(t, int64(13_000), w.chargedChatMC(), "the dead process's actions were counted in the store")
			})
			t.Run("5 a lost commit answer is resolved, never taken as settled", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 50_000)
				g := w.gate(t, leaseOf(50))
				for i := range 3 {
					w.gateNoted(t, g, w.cust, fmt.Sprint("m", i))
				}
				// The commit executes, and its answer is lost on every attempt.
				w.srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/reserve/", Drop: true, Count: 5})
				_ = g.Flush(context.Background()) // fails, or resends the same commit until it lands
				for i := 3; i < 9; i++ {
					d := w.gateNoted(t, g, w.cust, fmt.Sprint("m", i))
					assert.True(t, d.Allowed, "m%d: the customer still has credits", i)
				}
				require.NoError(t, g.Close(context.Background()))
				assert.Equal(t, int64(9_000), w.chargedChatMC())
			})
			t.Run("6 a lease whose commit came after its expiry is still charged", func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000, m.opts...)
				w.grantPlanCredits(t, 50_000)
				g := w.gate(t, autobuy.WithLease(autobuy.LeaseConfig{Actions: 50, TTL: time.Minute, Linger: time.Hour}))
				for i := range 4 {
					w.gateNoted(t, g, w.cust, fmt.Sprint("m", i))
				}
				// The commit lost the race to the gates until the reservation expired.
				w.clock.Advance(2 * time.Minute)
				require.NoError(t, g.Close(context.Background()))
				assert.Equal(t, int64(4_000), w.chargedChatMC(), "the late 409 is not taken as settled")
			})
		})
	}
}

// The long tail at the documented rate limit: many customers acting a few
// times each, leases committed in the background while gates compete for the
// same budget. Nothing allowed goes uncharged (CheckInvariants).
func TestLeaseLongTailAtTheRateLimit(t *testing.T) {
	t.Parallel()
	// The wall clock: the server's rate-limit window slides in real time. The
	// budget is tight and leases live 2 s: commits compete with gates and some
	// reservations expire before their commit.
	srv := quotastacktest.Start(t, quotastacktest.WithRateLimit(25, time.Second))
	require.NoError(t, srv.SeedRecipe())
	t.Cleanup(func() { assert.NoError(t, srv.CheckInvariants()) })
	const customers = 60
	names := make([]string, customers)
	for i := range names {
		names[i] = fmt.Sprintf("tail-%03d", i)
		exp := srv.Now().Add(time.Hour)
		_, err := srv.Grant(names[i], quotastacktest.BlockSpec{Credits: 7_500, Priority: 10, ExpiresAt: &exp,
			Metadata: map[string]string{"plan_type": "1hr", "source": "plan_grant"}})
		require.NoError(t, err)
	}
	c, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL),
		quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond))
	require.NoError(t, err)
	g, err := autobuy.New(c, autobuy.WithPlan(hourPlan),
		autobuy.WithLease(autobuy.LeaseConfig{Actions: 50, TTL: 2 * time.Second, Linger: 100 * time.Millisecond}))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			for k := range 3 {
				ev := fmt.Sprint("e", k)
				d, err := g.Gate(context.Background(), quotastack.ExternalID(name), "chat_message", autobuy.WithEventID(ev))
				if err == nil && d.Allowed && !d.Fallback {
					srv.NoteAllowed(name, "chat_message", ev, 1)
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, g.Close(context.Background()))
}

func TestReplayReturnsTheOriginalDecision(t *testing.T) {
	t.Parallel()
	for _, m := range chargeModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range []struct {
				name   string
				wallet int64
				opts   []autobuy.Option
			}{
				{"a wallet that could buy", 250_000, nil},
				{"an empty wallet", 0, nil},
				{"record-first", 250_000, []autobuy.Option{autobuy.WithRecordFirst()}},
				{"lease", 250_000, []autobuy.Option{leaseOf(1)}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					w := setup(t, tc.wallet, m.opts...)
					w.grantPlanCredits(t, 2_000) // two messages
					g := w.gate(t, tc.opts...)
					first := w.gateNoted(t, g, w.cust, "m1")
					w.gateNoted(t, g, w.cust, "m2") // the credits are gone now
					require.NoError(t, g.Flush(context.Background()))
					w.srv.ResetRequests()
					again := w.gateNoted(t, g, w.cust, "m1") // the client lost the answer and resends
					assert.True(t, again.Allowed)
					assert.True(t, again.Replayed)
					assert.Equal(t, first.Reason, again.Reason)
					assert.Zero(t, w.planGrants(), "no plan bought for a replay")
					for _, r := range w.srv.Requests() {
						assert.False(t, r.Method == http.MethodPost, "a replay sends nothing: %s %s", r.Method, r.Path)
					}
					require.NoError(t, g.Close(context.Background()))
					assert.Equal(t, int64(2_000), w.chargedChatMC())
				})
			}
		})
	}
}

// Two-phase middleware: a request whose first attempt failed (its hold
// released) and is retried does the work and is charged once.
func TestTwoPhaseRetryAfterAFailedAttemptIsCharged(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		g := w.gate(t)
		fail := true
		var mu sync.Mutex
		next := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			if fail {
				fail = false
				http.Error(rw, "model down", http.StatusBadGateway)
				return
			}
			w.srv.NoteAllowed(user, "chat_message", r.URL.Query().Get("msg"), 1)
			_, _ = rw.Write([]byte("done"))
		})
		h := autobuy.Middleware(g, func(r *http.Request) (autobuy.Action, error) {
			return autobuy.Action{Customer: w.cust, Metric: "chat_message", EventID: r.URL.Query().Get("msg")}, nil
		}, autobuy.TwoPhase(time.Minute))(next)
		for attempt, want := range []int{http.StatusBadGateway, http.StatusOK} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/chat?msg=m1", strings.NewReader("hi")))
			require.Equal(t, want, rec.Code, "attempt %d: %s", attempt, rec.Body.String())
		}
		assert.Equal(t, int64(1_000), w.chargedChatMC(), "the retry did the work: one charge")
		acct, _ := w.srv.Account(user)
		assert.Zero(t, acct.ReservedBalance)
	})
}

// Resume commits the idle leases a dead process left in a shared ChargeLog.
func TestResumeSettlesADeadProcessLease(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	w.grantPlanCredits(t, 50_000)
	durable := newStores()
	dead := w.gate(t, append(durable.opts(), leaseOf(50))...)
	t.Cleanup(func() { assert.NoError(t, dead.Close(context.Background())) })
	for i := range 3 {
		w.gateNoted(t, dead, w.cust, fmt.Sprint("d", i))
	}
	time.Sleep(30 * time.Millisecond)
	g := w.gate(t, append(durable.opts(), autobuy.WithLease(autobuy.LeaseConfig{Actions: 50, Linger: 10 * time.Millisecond}))...)
	t.Cleanup(func() { assert.NoError(t, g.Close(context.Background())) })
	_, err := g.Resume(context.Background(), 0)
	require.NoError(t, err)
	assert.Equal(t, int64(3_000), w.chargedChatMC(), "the dead process's three actions are committed")
	acct, _ := w.srv.Account(user)
	assert.Zero(t, acct.ReservedBalance, "nothing left held")
}

// A retry of a held event (its first attempt dead): when the first attempt's
// commit was under way (sent, its answer lost) the retry gets the same hold
// and its commit replays; otherwise the retry holds anew and the first hold is
// released if its attempt ever settles. Charged once either way, without
// comparing clocks.
func TestRetriedHoldIsChargedOnce(t *testing.T) {
	t.Parallel()
	for _, committed := range []bool{false, true} {
		t.Run(fmt.Sprint("commit sent ", committed), func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000)
			w.grantPlanCredits(t, 50_000)
			g := w.gate(t)
			hold := []autobuy.GateOption{autobuy.WithReservation(time.Minute)}
			first := w.gateNoted(t, g, w.cust, "m1", hold...)
			require.NotNil(t, first.Hold)
			if committed {
				// The commit executes; its answer is lost on every attempt.
				w.srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/reserve/", Drop: true, Count: 10})
				require.Error(t, g.Settle(context.Background(), first, true, 0))
				w.srv.ClearFaults()
			}
			w.clock.Advance(2 * time.Minute) // the first attempt's hold expires
			again := w.gateNoted(t, g, w.cust, "m1", hold...)
			require.True(t, again.Allowed)
			require.NotNil(t, again.Hold)
			if committed {
				assert.Equal(t, first.Hold.ID, again.Hold.ID, "the commit under way is resent, not raced")
			} else {
				assert.NotEqual(t, first.Hold.ID, again.Hold.ID, "held anew")
			}
			require.NoError(t, g.Settle(context.Background(), again, true, 0))
			if !committed {
				// The first attempt comes back late and settles: released, not charged.
				require.NoError(t, g.Settle(context.Background(), first, true, 0))
			}
			assert.Equal(t, int64(1_000), w.chargedChatMC(), "charged once")
		})
	}
}
