package autobuy_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

func TestMiddlewareGateWith(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	g := w.gate(t)
	var calls int
	wrapped := func(ctx context.Context, c quotastack.Customer, metric string, opts ...autobuy.GateOption) (autobuy.Decision, error) {
		calls++
		return g.Gate(ctx, c, metric, opts...)
	}
	h := autobuy.Middleware(g, chatAction, autobuy.GateWith(wrapped))(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	rec := serve(h, user, "msg_1")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, 1, calls)
}
