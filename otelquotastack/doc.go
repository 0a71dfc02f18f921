// Package otelquotastack instruments quotastack-go with OpenTelemetry. It is
// its own module, so applications that don't use OpenTelemetry never
// download it.
//
//   - ClientOption (or Transport) traces every HTTP attempt of a
//     quotastack.Client with otelhttp, and counts 429 answers. Customer ids in
//     URLs are replaced by {external_id} / {customer_id} unless
//     WithCustomerIDs is given.
//   - NewGateTracer wraps an autobuy.Gatekeeper: one span per Gate call, with
//     the decision's reason, the purchase, the attempts and the replay flag;
//     the HTTP spans of the call are its children.
//   - Hooks adds counters to an autobuy.Hooks (its Decided hook, which fires
//     once per Gate call): decisions by reason, purchases, retries.
//
// Nothing here ever records the API key: it travels only in the X-API-Key
// header, which otelhttp does not record, and the errors otelhttp records
// (net/http's, which quote a malformed answer a hostile server may fill
// with the key) pass through quotastack.RedactingTransport first. Errors are recorded by class
// ("rate_limited", "server_error", ...), not by their text, which may name a
// customer.
package otelquotastack
