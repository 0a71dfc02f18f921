package otelquotastack

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/quotastack/quotastack-go/autobuy"
)

// Hooks returns next with counters added to its Decided and LetThrough
// hooks (next's own, if any, still run first). Pass the result to
// autobuy.WithHooks. The counters, the first three once per Gate call:
//
//   - quotastack.gate.decisions: every decision, by reason, allowed and
//     fallback; a Gate call that returned an error is counted with reason
//     "error" and its class in quotastack.error.class.
//   - quotastack.gate.purchases: plans bought (or finished) by a gate, by
//     plan type and whether a step was a replay.
//   - quotastack.gate.retries: HTTP retries of the calls behind a decision
//     (see Retries).
//   - quotastack.gate.let_through: units lease mode let through without
//     knowing whether they were counted (autobuy.Hooks.LetThrough), by
//     metric: free at worst; alert on it.
func Hooks(next autobuy.Hooks, opts ...Option) (autobuy.Hooks, error) {
	cfg := newConfig(opts)
	m := cfg.mp.Meter(ScopeName)
	decisions, err := m.Int64Counter("quotastack.gate.decisions",
		metric.WithDescription("Gate decisions, by reason"), metric.WithUnit("{decision}"))
	if err != nil {
		return next, err
	}
	purchases, err := m.Int64Counter("quotastack.gate.purchases",
		metric.WithDescription("Plans bought (or finished) by a gate"), metric.WithUnit("{purchase}"))
	if err != nil {
		return next, err
	}
	retries, err := m.Int64Counter("quotastack.gate.retries",
		metric.WithDescription("HTTP retries of the calls behind gate decisions"), metric.WithUnit("{retry}"))
	if err != nil {
		return next, err
	}
	letThrough, err := m.Int64Counter("quotastack.gate.let_through",
		metric.WithDescription("Units lease mode let through without knowing whether they were counted on a lease: free at worst, never charged twice"),
		metric.WithUnit("{unit}"))
	if err != nil {
		return next, err
	}
	prevLet := next.LetThrough
	next.LetThrough = func(ctx context.Context, customer autobuy.CustomerRef, metricKey string, units int64, eventID string) {
		if prevLet != nil {
			prevLet(ctx, customer, metricKey, units, eventID)
		}
		letThrough.Add(ctx, units, metric.WithAttributes(AttrMetric.String(metricKey)))
	}
	prev := next.Decided
	next.Decided = func(ctx context.Context, customer autobuy.CustomerRef, metricKey string, d autobuy.Decision, err error) {
		if prev != nil {
			prev(ctx, customer, metricKey, d, err)
		}
		attrs := []attribute.KeyValue{AttrMetric.String(metricKey)}
		if err != nil {
			attrs = append(attrs, AttrReason.String("error"), AttrErrorClass.String(ErrorClass(err)))
		} else {
			attrs = append(attrs, AttrReason.String(string(d.Reason)), AttrAllowed.Bool(d.Allowed), AttrFallback.Bool(d.Fallback))
		}
		decisions.Add(ctx, 1, metric.WithAttributes(attrs...))
		if d.Purchase != nil {
			purchases.Add(ctx, 1, metric.WithAttributes(AttrPlanType.String(d.Purchase.Plan.Type),
				AttrPurchaseReplay.Bool(d.Purchase.DebitReplayed || d.Purchase.GrantReplayed)))
		}
		if n := Retries(d, err); n > 0 {
			retries.Add(ctx, int64(n), metric.WithAttributes(AttrMetric.String(metricKey)))
		}
	}
	return next, nil
}

// otelErr reports an instrumentation error through OpenTelemetry's handler.
func otelErr(err error) { otel.Handle(err) }
