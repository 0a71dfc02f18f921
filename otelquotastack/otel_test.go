package otelquotastack_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/otelquotastack"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

const user = "user42:companion7"

var hourPlan = plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

// telemetry is an in-memory tracer and meter provider.
type telemetry struct {
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
	opts   []otelquotastack.Option
}

func newTelemetry(t *testing.T, extra ...otelquotastack.Option) *telemetry {
	t.Helper()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	opts := append([]otelquotastack.Option{otelquotastack.WithTracerProvider(tp), otelquotastack.WithMeterProvider(mp)}, extra...)
	return &telemetry{spans: spans, reader: reader, opts: opts}
}

// counter returns the sum of the counter's points whose attributes include want.
func (tm *telemetry) counter(t *testing.T, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, tm.reader.Collect(context.Background(), &rm))
	var sum int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			data, ok := m.Data.(metricdata.Sum[int64])
			require.True(t, ok, name)
			for _, p := range data.DataPoints {
				match := true
				for _, kv := range want {
					v, ok := p.Attributes.Value(kv.Key)
					match = match && ok && v == kv.Value
				}
				if match {
					sum += p.Value
				}
			}
		}
	}
	return sum
}

func attrs(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
	out := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes {
		out[kv.Key] = kv.Value
	}
	return out
}

// assertNothingLeaks checks every span's name, attributes, events and status
// for the API key and the customer's external id.
func assertNothingLeaks(t *testing.T, spans tracetest.SpanStubs, secrets ...string) {
	t.Helper()
	for _, s := range spans {
		texts := []string{s.Name, s.Status.Description}
		for _, kv := range s.Attributes {
			texts = append(texts, kv.Value.String())
		}
		for _, e := range s.Events {
			texts = append(texts, e.Name)
			for _, kv := range e.Attributes {
				texts = append(texts, kv.Value.String())
			}
		}
		for _, text := range texts {
			for _, secret := range secrets {
				assert.NotContains(t, text, secret, "span %q", s.Name)
			}
		}
	}
}

func TestTransportSpansWithoutCustomerIDs(t *testing.T) {
	t.Parallel()
	tm := newTelemetry(t)
	srv := quotastacktest.Start(t)
	require.NoError(t, srv.SeedRecipe())
	_, err := srv.Grant(user, quotastacktest.BlockSpec{Credits: 1000})
	require.NoError(t, err)
	client := srv.Client(otelquotastack.ClientOption(tm.opts...))

	ent, err := client.Check(context.Background(), quotastack.ExternalID(user), "chat_message", 1)
	require.NoError(t, err)
	assert.Equal(t, user, ent.ExternalCustomerID, "the request still reached the customer's real path")

	spans := tm.spans.GetSpans()
	require.Len(t, spans, 1)
	s := spans[0]
	assert.Equal(t, "quotastack GET /v1/customer-by-external-id/{external_id}/entitlements/{metric}", s.Name)
	full := attrs(s)["url.full"].AsString()
	assert.Equal(t, srv.URL+"/v1/customer-by-external-id/%7Bexternal_id%7D/entitlements/chat_message?units=1", full)
	assert.Equal(t, int64(200), attrs(s)["http.response.status_code"].AsInt64())
	assertNothingLeaks(t, spans, srv.APIKey, "user42", "companion7")
}

func TestTransportSpansWithCustomerIDs(t *testing.T) {
	t.Parallel()
	tm := newTelemetry(t, otelquotastack.WithCustomerIDs())
	srv := quotastacktest.Start(t)
	_, err := srv.Grant(user, quotastacktest.BlockSpec{Credits: 1000})
	require.NoError(t, err)
	client := srv.Client(otelquotastack.ClientOption(tm.opts...))
	_, err = client.Balance(context.Background(), quotastack.ExternalID(user))
	require.NoError(t, err)
	spans := tm.spans.GetSpans()
	require.Len(t, spans, 1)
	assert.Contains(t, attrs(spans[0])["url.full"].AsString(), "/v1/customer-by-external-id/user42%3Acompanion7/credits")
	assertNothingLeaks(t, spans, srv.APIKey)
}

func TestTransportCountsRateLimitsAndTracesEachAttempt(t *testing.T) {
	t.Parallel()
	tm := newTelemetry(t)
	srv := quotastacktest.Start(t)
	_, err := srv.Grant(user, quotastacktest.BlockSpec{Credits: 1000})
	require.NoError(t, err)
	client := srv.Client(otelquotastack.ClientOption(tm.opts...), quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond))
	srv.InjectFault(quotastacktest.Fault{Method: "GET", Status: 429, RetryAfter: "0", Count: 2})

	bal, err := client.Balance(context.Background(), quotastack.ExternalID(user))
	require.NoError(t, err)
	assert.Equal(t, 3, bal.Meta.Attempts)
	spans := tm.spans.GetSpans()
	require.Len(t, spans, 3, "one span per attempt")
	assert.Equal(t, int64(429), attrs(spans[0])["http.response.status_code"].AsInt64())
	assert.Equal(t, int64(200), attrs(spans[2])["http.response.status_code"].AsInt64())
	assert.Equal(t, int64(2), tm.counter(t, "quotastack.client.rate_limited",
		attribute.String("quotastack.route", "/v1/customer-by-external-id/{external_id}/credits")))
}

// gateWorld is a seeded fake, a traced client, a gate with the counting
// hooks, and its tracer.
func gateWorld(t *testing.T, tm *telemetry, walletMC int64, gateOpts ...autobuy.Option) (*quotastacktest.Server, *otelquotastack.GateTracer) {
	t.Helper()
	srv := quotastacktest.Start(t)
	require.NoError(t, srv.SeedRecipe())
	if walletMC > 0 {
		_, err := srv.Grant(user, quotastacktest.BlockSpec{Credits: walletMC})
		require.NoError(t, err)
	}
	client := srv.Client(otelquotastack.ClientOption(tm.opts...), quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond))
	var decidedByUser int
	hooks, err := otelquotastack.Hooks(autobuy.Hooks{Decided: func(context.Context, autobuy.CustomerRef, string, autobuy.Decision, error) {
		decidedByUser++
	}}, tm.opts...)
	require.NoError(t, err)
	g, err := autobuy.New(client, append([]autobuy.Option{autobuy.WithPlan(hourPlan), autobuy.WithHooks(hooks)}, gateOpts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { assert.Positive(t, decidedByUser, "the application's own Decided hook still runs") })
	return srv, otelquotastack.NewGateTracer(g, tm.opts...)
}

func gateSpan(t *testing.T, spans tracetest.SpanStubs) tracetest.SpanStub {
	t.Helper()
	for _, s := range spans {
		if strings.HasPrefix(s.Name, "quotastack.gate ") {
			return s
		}
	}
	require.FailNow(t, "no gate span")
	return tracetest.SpanStub{}
}

func TestGateSpanAndCountersOfAnAutoBuy(t *testing.T) {
	t.Parallel()
	tm := newTelemetry(t)
	srv, tracer := gateWorld(t, tm, 250_000)
	ctx := context.Background()

	d, err := tracer.Gate(ctx, quotastack.ExternalID(user), "chat_message", autobuy.WithEventID("msg_1"))
	require.NoError(t, err)
	require.Equal(t, autobuy.ReasonAutoBought, d.Reason)

	spans := tm.spans.GetSpans()
	g := gateSpan(t, spans)
	a := attrs(g)
	assert.Equal(t, "quotastack.gate chat_message", g.Name)
	assert.Equal(t, "chat_message", a[otelquotastack.AttrMetric].AsString())
	assert.True(t, a[otelquotastack.AttrAllowed].AsBool())
	assert.Equal(t, "auto_bought", a[otelquotastack.AttrReason].AsString())
	assert.False(t, a[otelquotastack.AttrFallback].AsBool())
	assert.False(t, a[otelquotastack.AttrReplayed].AsBool())
	assert.Equal(t, d.Purchase.OrderID, a[otelquotastack.AttrOrderID].AsString())
	assert.Equal(t, "1hr", a[otelquotastack.AttrPlanType].AsString())
	assert.Equal(t, int64(otelquotastack.Attempts(d, nil)), a[otelquotastack.AttrAttempts].AsInt64())
	assert.Equal(t, int64(3), a[otelquotastack.AttrAttempts].AsInt64(), "the last check, the debit and the record")
	assert.NotContains(t, a, otelquotastack.AttrExternalID)
	assert.NotContains(t, a, otelquotastack.AttrCustomerID)
	assert.Equal(t, codes.Unset, g.Status.Code)

	// Every HTTP span of the gate is its child.
	http := 0
	for _, s := range spans {
		if s.Name != g.Name {
			http++
			assert.Equal(t, g.SpanContext.SpanID(), s.Parent.SpanID(), s.Name)
		}
	}
	assert.Equal(t, len(srv.Requests()), http, "one span per request the server saw")
	assertNothingLeaks(t, spans, srv.APIKey, "user42", "companion7")

	assert.Equal(t, int64(1), tm.counter(t, "quotastack.gate.decisions", otelquotastack.AttrReason.String("auto_bought"), otelquotastack.AttrAllowed.Bool(true)))
	assert.Equal(t, int64(1), tm.counter(t, "quotastack.gate.purchases", otelquotastack.AttrPlanType.String("1hr"), otelquotastack.AttrPurchaseReplay.Bool(false)))
	assert.Zero(t, tm.counter(t, "quotastack.gate.retries"))

	// The same event again: answered from the record of charged events, with
	// the original decision and no request.
	tm.spans.Reset()
	d, err = tracer.Gate(ctx, quotastack.ExternalID(user), "chat_message", autobuy.WithEventID("msg_1"))
	require.NoError(t, err)
	assert.True(t, d.Replayed)
	assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
	assert.True(t, attrs(gateSpan(t, tm.spans.GetSpans()))[otelquotastack.AttrReplayed].AsBool())
	assert.Equal(t, int64(2), tm.counter(t, "quotastack.gate.decisions", otelquotastack.AttrReason.String("auto_bought"), otelquotastack.AttrAllowed.Bool(true)))
}

func TestGateSpanWithCustomerIDs(t *testing.T) {
	t.Parallel()
	tm := newTelemetry(t, otelquotastack.WithCustomerIDs())
	_, tracer := gateWorld(t, tm, 250_000)
	d, err := tracer.Gate(context.Background(), quotastack.ExternalID(user), "chat_message")
	require.NoError(t, err)
	a := attrs(gateSpan(t, tm.spans.GetSpans()))
	assert.Equal(t, user, a[otelquotastack.AttrExternalID].AsString())
	assert.Equal(t, d.CustomerID, a[otelquotastack.AttrCustomerID].AsString())
}

func TestGateCountersOfDenialsAndErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("paywall", func(t *testing.T) {
		t.Parallel()
		tm := newTelemetry(t)
		_, tracer := gateWorld(t, tm, 20_000)
		d, err := tracer.Gate(ctx, quotastack.ExternalID(user), "chat_message")
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonEmptyWallet, d.Reason)
		assert.Equal(t, "empty_wallet", attrs(gateSpan(t, tm.spans.GetSpans()))[otelquotastack.AttrReason].AsString())
		assert.Equal(t, int64(1), tm.counter(t, "quotastack.gate.decisions", otelquotastack.AttrReason.String("empty_wallet"), otelquotastack.AttrAllowed.Bool(false)))
		assert.Zero(t, tm.counter(t, "quotastack.gate.purchases"))
	})

	t.Run("outage returned as an error", func(t *testing.T) {
		t.Parallel()
		tm := newTelemetry(t)
		srv, tracer := gateWorld(t, tm, 250_000)
		srv.InjectFault(quotastacktest.Fault{Status: 500, Count: 100})
		_, err := tracer.Gate(ctx, quotastack.ExternalID(user), "chat_message")
		require.ErrorIs(t, err, quotastack.ErrServer)
		g := gateSpan(t, tm.spans.GetSpans())
		assert.Equal(t, codes.Error, g.Status.Code)
		assert.Equal(t, "server_error", g.Status.Description, "the class, never the error's text (it names the customer)")
		assert.Equal(t, int64(4), attrs(g)[otelquotastack.AttrAttempts].AsInt64())
		assertNothingLeaks(t, tm.spans.GetSpans(), srv.APIKey, "user42", "companion7")
		assert.Equal(t, int64(1), tm.counter(t, "quotastack.gate.decisions", otelquotastack.AttrReason.String("error"), otelquotastack.AttrErrorClass.String("server_error")))
		assert.Equal(t, int64(3), tm.counter(t, "quotastack.gate.retries"))
	})

	t.Run("fail closed", func(t *testing.T) {
		t.Parallel()
		tm := newTelemetry(t)
		srv, tracer := gateWorld(t, tm, 250_000, autobuy.WithFallback(autobuy.FailClosed))
		srv.InjectFault(quotastacktest.Fault{Status: 503, RetryAfter: "0", Count: 100})
		d, err := tracer.Gate(ctx, quotastack.ExternalID(user), "chat_message")
		require.NoError(t, err)
		require.True(t, d.Fallback)
		g := gateSpan(t, tm.spans.GetSpans())
		assert.Equal(t, codes.Error, g.Status.Code)
		assert.True(t, attrs(g)[otelquotastack.AttrFallback].AsBool())
		assert.Equal(t, "server_error", attrs(g)[otelquotastack.AttrErrorClass].AsString())
		assert.Equal(t, int64(1), tm.counter(t, "quotastack.gate.decisions", otelquotastack.AttrReason.String("unavailable"), otelquotastack.AttrFallback.Bool(true)))
	})
}

// TestMiddlewareGatesThroughTheTracer: autobuy.GateWith routes the
// middleware's gate calls through the tracer, two-phase mode included.
func TestMiddlewareGatesThroughTheTracer(t *testing.T) {
	t.Parallel()
	tm := newTelemetry(t)
	srv, tracer := gateWorld(t, tm, 250_000)
	h := autobuy.Middleware(tracer.Gatekeeper(), func(*http.Request) (autobuy.Action, error) {
		return autobuy.Action{Customer: quotastack.ExternalID(user), Metric: "chat_message", EventID: "msg_1"}, nil
	}, autobuy.GateWith(tracer.Gate), autobuy.TwoPhase(time.Minute))(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/chat", nil))
	assert.Equal(t, http.StatusCreated, rec.Code)
	assert.Equal(t, "auto_bought", attrs(gateSpan(t, tm.spans.GetSpans()))[otelquotastack.AttrReason].AsString())
	var commits int
	for _, s := range tm.spans.GetSpans() {
		if s.Name == "quotastack POST /v1/reserve/{reservation_id}/commit" {
			commits++
		}
	}
	assert.Equal(t, 1, commits)
	assert.Len(t, srv.UsageEvents(user), 2, "the plan's debit and the committed message")
}

// Units let through not known to be counted are counted by metric, and the
// application's own LetThrough hook still runs.
func TestLetThroughCounter(t *testing.T) {
	t.Parallel()
	tm := newTelemetry(t)
	var own int64
	hooks, err := otelquotastack.Hooks(autobuy.Hooks{LetThrough: func(_ context.Context, _ autobuy.CustomerRef, _ string, units int64, _ string) {
		own += units
	}}, tm.opts...)
	require.NoError(t, err)
	ref := autobuy.CustomerRef{Given: quotastack.ExternalID(user), ID: "cus_uuid"}
	hooks.LetThrough(context.Background(), ref, "chat_message", 2, "m1")
	hooks.LetThrough(context.Background(), ref, "chat_message", 1, "")
	assert.Equal(t, int64(3), tm.counter(t, "quotastack.gate.let_through", otelquotastack.AttrMetric.String("chat_message")))
	assert.Equal(t, int64(3), own)
}
