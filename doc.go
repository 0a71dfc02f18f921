// Package quotastack is the Go client of QuotaStack, a credit-native billing
// API: entitlement checks, balances, usage events and topups. Amounts are
// int64 millicredits (1 credit = 1,000 mc). A Client is safe for concurrent use.
//
// Build one Client per API key (NewClient, or NewClientFromEnv) and share it.
// Keys start with qs_live_ or qs_test_; the key travels only in the X-API-Key
// header and never appears in an error, a log line or a URL.
//
// Every POST carries an Idempotency-Key: pass your own, derived from your
// business id (WithIdempotencyKey("usage:"+messageID), DeriveKey,
// SignupGrantKey, ActionGrantKey), or the client makes one per call and reuses
// it on each retry. GETs and keyed POSTs are retried on transport errors,
// timeouts, 429 and 5xx; results say how many attempts were made
// (ResponseMeta.Attempts) and whether the server replayed a stored answer
// (ResponseMeta.Replayed).
//
// What a key stores: the server keeps the first answer to a key for 24 hours,
// failures (4xx) included, and replays it to every request with that key and
// the same body; the same key with another body is ErrIdempotencyConflict.
// So a grant sent before its customer exists replays its 404 after the
// customer is created (Error() says "(replayed)"), and a body field computed
// from time.Now() turns a retry into a conflict. EnsureCustomer and
// GrantSignupBonus avoid both. Only 5xx answers are not stored.
//
// Errors are one *APIError type plus sentinels for errors.Is
// (ErrInsufficientCredits, ErrNotFound, ErrRateLimited, ...); a call that got
// no HTTP answer returns a *RequestError.
//
// Related packages: plan (buying a plan from the wallet in two idempotent
// steps), autobuy (a gate that auto-buys the next plan when plan credits run
// out, and its HTTP middleware), quotastacktest (an in-memory QuotaStack for
// tests), webhook (verifying deliveries). The nested modules
// autobuy/redislock (a Redis lock across replicas) and otelquotastack
// (OpenTelemetry) keep their dependencies out of this module.
package quotastack
