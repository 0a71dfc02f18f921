package pgstore_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// countingConn counts the client's writes to PostgreSQL: each is a flush of
// one request (a statement, a pipelined batch) that waits for its answer, so
// one round trip.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// queryCounter counts statements and batches as pgx sends them.
type queryCounter struct{ n atomic.Int64 }

func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	q.n.Add(1)
	return ctx
}
func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// benchPlan buys exactly one chat message: every gate of a customer without
// plan credits buys a plan.
var benchPlan = plan.Plan{Type: "1msg", PriceMC: 1_000, CreditsMC: 1_000, Duration: time.Hour}

type benchStore struct {
	name           string
	journal        autobuy.Journal
	locker         autobuy.Locker
	charges        autobuy.ChargeLog
	writes, querys func() int64
}

func benchStores(b *testing.B) []benchStore {
	out := []benchStore{{name: "memory", journal: autobuy.NewMemoryJournal(0), locker: autobuy.NewLocalLocker(),
		charges: autobuy.NewMemoryChargeLog(0), writes: func() int64 { return 0 }, querys: func() int64 { return 0 }}}
	var writes atomic.Int64
	qc := &queryCounter{}
	pool := testPool(b, 16, func(c *pgxpool.Config) {
		c.MinConns = 16
		d := &net.Dialer{KeepAlive: 5 * time.Minute}
		c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countingConn{Conn: conn, writes: &writes}, nil
		}
		c.ConnConfig.Tracer = qc
	})
	s := newStore(b, pool)
	return append(out, benchStore{name: "postgres", journal: s.Journal(), locker: s.Locker(), charges: s.ChargeLog(),
		writes: writes.Load, querys: qc.n.Load})
}

// benchGate runs gates of kind on each store in parallel goroutines, each
// gating its own customer, and reports gates/s and the SQL round trips
// (socket writes) and statements per gate.
func benchGate(b *testing.B, kind string) {
	for _, st := range benchStores(b) {
		b.Run(st.name, func(b *testing.B) {
			srv := quotastacktest.Start(b)
			if err := srv.SeedRecipe(benchPlan.Metric()); err != nil {
				b.Fatal(err)
			}
			g, err := autobuy.New(srv.Client(), autobuy.WithPlan(benchPlan), autobuy.WithJournal(st.journal), autobuy.WithLocker(st.locker),
				autobuy.WithChargeLog(st.charges))
			if err != nil {
				b.Fatal(err)
			}
			var seq atomic.Int64
			want := map[string]autobuy.Reason{"purchase": autobuy.ReasonAutoBought, "entitled": autobuy.ReasonEntitled,
				"paywall": autobuy.ReasonEmptyWallet}[kind]
			customer := func() quotastack.Customer {
				id := fmt.Sprintf("bench %s %s %d", kind, st.name, seq.Add(1))
				spec := quotastacktest.BlockSpec{Credits: 1 << 40} // a wallet for every purchase
				switch kind {
				case "entitled":
					spec.Priority = 10 // plan credits for every action
				case "paywall":
					spec.Credits = 1
				}
				if _, err := srv.Grant(id, spec); err != nil {
					b.Fatal(err)
				}
				return quotastack.ExternalID(id)
			}
			gate := func(c quotastack.Customer, n int64) {
				d, err := g.Gate(context.Background(), c, "chat_message", autobuy.WithEventID(fmt.Sprint("e", n)))
				if err != nil || d.Reason != want {
					b.Errorf("gate: %s, %v (want %s)", d.Reason, err, want)
				}
			}
			// Warm up: connections opened, statements prepared.
			for i := range 4 {
				c := customer()
				for j := range 3 {
					gate(c, int64(i*10+j))
				}
			}
			w0, q0 := st.writes(), st.querys()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				c := customer()
				var n int64
				for pb.Next() {
					n++
					gate(c, n)
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "gates/s")
			b.ReportMetric(float64(st.writes()-w0)/float64(b.N), "sql-roundtrips/gate")
			b.ReportMetric(float64(st.querys()-q0)/float64(b.N), "sql-statements/gate")
		})
	}
}

// BenchmarkPurchase: every gate buys a plan (5 HTTP round trips to the fake
// on loopback), on the in-memory journal and on PostgreSQL.
func BenchmarkPurchase(b *testing.B) { benchGate(b, "purchase") }

// BenchmarkGateEntitled: the customer has plan credits: the journal is not read.
func BenchmarkGateEntitled(b *testing.B) { benchGate(b, "entitled") }

// BenchmarkGatePaywall: the customer has run out and can't pay: the gate
// takes the lock and reads the journal before answering with the paywall.
func BenchmarkGatePaywall(b *testing.B) { benchGate(b, "paywall") }
