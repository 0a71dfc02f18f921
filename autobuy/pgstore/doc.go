// Package pgstore keeps the autobuy gate's shared state in PostgreSQL (13 or
// newer), the database most Go backends that charge customers already run:
// the purchase journal (autobuy.Journal), the customer lock (autobuy.Locker),
// and the record of charged events and leases (autobuy.ChargeLog). It lives in
// its own module so the core SDK never pulls in a database driver.
//
//	store, err := pgstore.New(pool) // your *pgxpool.Pool
//	if err := store.Migrate(ctx); err != nil { ... } // idempotent; every replica may run it at start-up
//	gate, err := autobuy.New(client, autobuy.WithPlan(hourPlan),
//		autobuy.WithJournal(store.Journal()), autobuy.WithLocker(store.Locker()))
//
// Guarantees, all held by the database rather than by code:
//   - every journal write is one statement (one transaction): a
//     compare-and-set on the intent's revision, the customer's revision
//     counter bumped with it;
//   - one open intent per customer, by a partial unique index;
//   - one record per customer and event, by the primary key; a lease's
//     units are taken by one conditional UPDATE, never past what it holds;
//   - a lock is a transaction-scoped advisory lock held by a dedicated
//     connection for the lock's lifetime (never a session lock on a pooled
//     connection). Taking it also draws a fencing token from a sequence; the
//     journal's writes of a customer whose lock this process holds carry the
//     token and commit only while it is still the customer's latest (see
//     Locker). A lock lost with its connection therefore stops its holder's
//     purchase at its next journal write, and the purchase is finished by the
//     next holder from the journal, with the same idempotency keys.
//
// Use the Journal and the Locker of one Store (so that writes are fenced);
// the ChargeLog may come from the same Store or another.
//
// The schema (SQL in the README, Schema returns it) is yours to read and
// own: table names take a prefix and a schema (WithTablePrefix, WithSchema),
// and nothing needs superuser rights.
package pgstore
