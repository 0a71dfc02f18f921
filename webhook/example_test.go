package webhook_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/quotastack/quotastack-go/webhook"
)

func ExampleVerifier_Handler() {
	secret := "whsec_cXVvdGFzdGFjay10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5" // from the QuotaStack dashboard
	v, err := webhook.NewVerifier(secret)
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks/quotastack", v.Handler(func(ctx context.Context, ev *webhook.Event) error {
		switch ev.Type {
		case webhook.EventSubscriptionRenewalDue:
			fmt.Println("renewal due:", string(ev.Data))
		case webhook.EventSubscriptionRenewed:
			fmt.Println("renewed:", string(ev.Data))
		}
		return nil // an error makes the handler answer 500, and QuotaStack retries
	}))

	// What a QuotaStack delivery looks like, built with SignedHeaders.
	body := `{"id":"evt_1","type":"subscription.renewal_due","created_at":"2021-02-25T15:02:10Z","data":{"customer_id":"c1"}}`
	req := httptest.NewRequest(http.MethodPost, "/webhooks/quotastack", strings.NewReader(body))
	h, err := webhook.SignedHeaders(secret, "msg_1", time.Now(), []byte(body))
	if err != nil {
		panic(err)
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	fmt.Println(rec.Code)
	// Output:
	// renewal due: {"customer_id":"c1"}
	// 204
}

func ExampleVerifier_Parse() {
	secret := "cXVvdGFzdGFjay10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5"
	sentAt := time.Unix(1614265330, 0)
	v, err := webhook.NewVerifier(secret, webhook.WithClock(func() time.Time { return sentAt.Add(time.Minute) }))
	if err != nil {
		panic(err)
	}
	body := []byte(`{"id":"evt_2","type":"subscription.renewed","created_at":"2021-02-25T15:02:10Z","data":{}}`)
	headers, err := webhook.SignedHeaders(secret, "msg_2", sentAt, body)
	if err != nil {
		panic(err)
	}

	ev, err := v.Parse(headers, body)
	fmt.Println(ev.Type, ev.CreatedAt.Format(time.RFC3339), err)

	_, err = v.Parse(headers, []byte(`{"id":"evt_2","type":"subscription.renewed","data":{"forged":true}}`))
	fmt.Println(err)
	// Output:
	// subscription.renewed 2021-02-25T15:02:10Z <nil>
	// webhook: no valid signature
}
