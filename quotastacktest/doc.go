// Package quotastacktest is an in-memory QuotaStack for tests and examples, in the spirit of
// net/http/httptest: NewServer (or Start in a test) serves the HTTP API of the contract on
// loopback with real JSON, auth, idempotency and problem+json errors, and the ledger behind it
// (credit blocks, burn order, eligibility, reservations, expiry on an injectable Clock).
//
//	srv := quotastacktest.Start(t, quotastacktest.WithClock(clock))
//	srv.CreateRule(quotastacktest.Rule{MetricKey: "chat_message", CostType: "per_unit", UnitCost: 1000,
//		Eligible: &quotastacktest.Eligibility{MinPriority: quotastacktest.Ptr(10)}})
//	srv.Grant("user42:companion7", quotastacktest.Grant{Credits: 500_000})
//	client := srv.Client() // a *quotastack.Client wired to srv.URL and srv.APIKey
//
// Tests can script faults (FailNext, DropNext, InjectFault, SetLatency, SetRandomFaults),
// turn on rate limiting, and assert on what happened (Requests, Ledger, UsageEvents, Blocks,
// Account, CheckInvariants). Every amount is an int64 of millicredits (mc). A Server and
// all its methods are safe for concurrent use.
//
// The fake knows nothing of the SDK's code (only Server.Client imports it), so it cannot
// share the client's misunderstandings of the contract.
package quotastacktest
