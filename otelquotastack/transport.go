package otelquotastack

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/quotastack/quotastack-go"
)

// ClientOption returns the quotastack.Option that sends a client's requests
// through Transport(nil, opts...): every HTTP attempt (a retry is an attempt
// of its own) becomes a client span.
func ClientOption(opts ...Option) quotastack.Option {
	return quotastack.WithTransport(Transport(nil, opts...))
}

// Transport wraps base (nil: a pooled transport like the client's default)
// with otelhttp. Spans are named "quotastack METHOD ROUTE", e.g.
// "quotastack GET /v1/customer-by-external-id/{external_id}/entitlements/{metric}";
// url.full holds the path with customer ids replaced unless WithCustomerIDs
// is given. Answers 429 are counted in quotastack.client.rate_limited.
// Errors of base (and of reading a response body) reach otelhttp, which
// records their text in spans, through quotastack.RedactingTransport: never
// with the API key. Pass it to quotastack.WithTransport, or set it as the
// Transport of the http.Client given to quotastack.WithHTTPClient.
func Transport(base http.RoundTripper, opts ...Option) http.RoundTripper {
	cfg := newConfig(opts)
	if base == nil {
		base = pooledTransport()
	}
	limited, err := cfg.mp.Meter(ScopeName).Int64Counter("quotastack.client.rate_limited",
		metric.WithDescription("HTTP attempts answered 429 Too Many Requests by QuotaStack"), metric.WithUnit("{response}"))
	if err != nil {
		otelErr(err)
	}
	// Redaction sits below otelhttp, which writes error text into spans: a
	// hostile server's malformed answer quoting the API key never reaches one.
	inner := &restoreURL{base: quotastack.RedactingTransport(base), limited: limited}
	traced := otelhttp.NewTransport(inner,
		otelhttp.WithTracerProvider(cfg.tp), otelhttp.WithMeterProvider(cfg.mp),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return "quotastack " + r.Method + " " + route(r.URL.EscapedPath())
		}))
	return &redactURL{next: traced, keepIDs: cfg.customerIDs}
}

type originalURLKey struct{}

// redactURL hands otelhttp a request whose URL has no customer ids; the
// request sent keeps its real URL (restoreURL puts it back).
type redactURL struct {
	next    http.RoundTripper
	keepIDs bool
}

func (t *redactURL) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.keepIDs {
		return t.next.RoundTrip(r)
	}
	red := *r.URL
	red.RawPath = redactPath(r.URL.EscapedPath())
	red.Path, _ = url.PathUnescape(red.RawPath)
	r2 := r.WithContext(context.WithValue(r.Context(), originalURLKey{}, r.URL))
	r2.URL = &red
	return t.next.RoundTrip(r2)
}

// restoreURL sends the request with its original URL and counts 429s.
type restoreURL struct {
	base    http.RoundTripper
	limited metric.Int64Counter
}

func (t *restoreURL) RoundTrip(r *http.Request) (*http.Response, error) {
	if orig, ok := r.Context().Value(originalURLKey{}).(*url.URL); ok {
		r = r.Clone(r.Context())
		r.URL = orig
	}
	resp, err := t.base.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests && t.limited != nil {
		t.limited.Add(r.Context(), 1, metric.WithAttributes(
			attribute.String("http.request.method", r.Method),
			attribute.String("quotastack.route", route(r.URL.EscapedPath()))))
	}
	return resp, err
}

// redactPath replaces the customer segment of a QuotaStack path.
func redactPath(escaped string) string {
	segs := strings.Split(escaped, "/")
	for i := 0; i+1 < len(segs); i++ {
		switch segs[i] {
		case "customer-by-external-id":
			segs[i+1] = "{external_id}"
		case "customers":
			segs[i+1] = "{customer_id}"
		}
	}
	return strings.Join(segs, "/")
}

// route is the low-cardinality form of a path, for span names and metric
// attributes: customer ids, metric keys, reservation and rule ids become
// placeholders.
func route(escaped string) string {
	segs := strings.Split(redactPath(escaped), "/")
	for i := 0; i+1 < len(segs); i++ {
		switch segs[i] {
		case "entitlements", "billable-metrics":
			segs[i+1] = "{metric}"
		case "reserve":
			segs[i+1] = "{reservation_id}"
		case "metering-rules":
			segs[i+1] = "{rule_id}"
		}
	}
	return strings.Join(segs, "/")
}

// pooledTransport mirrors the client's default: enough idle connections per
// host for concurrent callers, and a bounded pool.
func pooledTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	t.MaxConnsPerHost = 64
	return t
}
