// Package quotastacktest is an in-memory QuotaStack for tests and examples, in the spirit of
// net/http/httptest: NewServer (or Start in a test) serves the HTTP API of the contract on
// loopback with real JSON, auth, idempotency and problem+json errors, and the ledger behind it
// (credit blocks, burn order, eligibility, reservations, expiry on an injectable Clock).
//
//	srv := quotastacktest.Start(t, quotastacktest.WithClock(clock.Now))
//	srv.CreateRule(quotastack.Rule{BillableMetricKey: "chat_message", CostType: "per_unit", UnitCost: 1000,
//		Eligible: &quotastack.Eligibility{MinPriority: quotastacktest.Ptr(10)}})
//	srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 500_000})
//	client := srv.Client() // a *quotastack.Client wired to srv.URL and srv.APIKey
//
// Tests can script faults (FailNext, DropNext, InjectFault, SetLatency, SetRandomFaults),
// turn on rate limiting, and assert on what happened (Requests, Ledger, UsageEvents, Blocks,
// Account, PlanOrders, CheckInvariants). CheckInvariants also checks the money of plan
// purchases: no order debited or granted twice, no grant without its debit, no debit
// without its grant once the system is quiet, one plan per exhaustion.
//
// By default the fake is as kind as the contract allows. Modes lists the ways a real server
// may be less kind (usage answered 202 with no body, sparse answers, a 5xx after the
// request executed, the documented rate limit); RunModes runs one scenario against each.
//
// Costs stay flat as a soak runs: a request touches only its customer's live blocks (not
// every block ever granted), the request log keeps the last DefaultRequestLogLimit requests
// (WithRequestLogLimit; RequestsForgotten counts the rest), and the idempotency store keeps
// at most DefaultIdempotencyLimit keys (WithIdempotencyLimit): expired keys (24 h) go first,
// and past the bound the oldest finished key is forgotten early, so a retry with it executes
// again (which CheckInvariants reports for usage). What CheckInvariants reads (the ledger,
// usage events, every block, plan orders) is kept whole and grows with the money moved.
//
// Every amount is an int64 of millicredits (mc). A Server and all its methods are safe for
// concurrent use.
//
// The fake knows nothing of the SDK's code (only Server.Client imports it), so it cannot
// share the client's misunderstandings of the contract.
package quotastacktest
