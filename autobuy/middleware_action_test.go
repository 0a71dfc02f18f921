package autobuy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

// The handler reads the whole body even when the ActionFunc read (part of)
// it first: the middleware gives the handler back what the ActionFunc read.
func TestMiddlewareHandlerSeesTheBodyTheActionRead(t *testing.T) {
	t.Parallel()
	const body = `{"user":"user42:companion7","msg":"m1","text":"hello there"}`
	tests := []struct {
		name   string
		action autobuy.ActionFunc
	}{
		{"decoded all of it", func(r *http.Request) (autobuy.Action, error) {
			var in struct{ User, Msg string }
			if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
				return autobuy.Action{}, err
			}
			return autobuy.Action{Customer: quotastack.ExternalID(in.User), Metric: "chat_message", EventID: in.Msg}, nil
		}},
		{"read a prefix and closed it", func(r *http.Request) (autobuy.Action, error) {
			buf := make([]byte, 10)
			_, err := io.ReadFull(r.Body, buf)
			_ = r.Body.Close()
			return autobuy.Action{Customer: quotastack.ExternalID(user), Metric: "chat_message", EventID: "m1"}, err
		}},
		{"bounded the body, then decoded it", func(r *http.Request) (autobuy.Action, error) {
			r.Body = http.MaxBytesReader(nil, r.Body, 1<<20)
			var in struct{ User, Msg string }
			if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
				return autobuy.Action{}, err
			}
			return autobuy.Action{Customer: quotastack.ExternalID(in.User), Metric: "chat_message", EventID: in.Msg}, nil
		}},
		{"read nothing", func(*http.Request) (autobuy.Action, error) {
			return autobuy.Action{Customer: quotastack.ExternalID(user), Metric: "chat_message", EventID: "m1"}, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 0)
			w.grantPlanCredits(t, 5_000)
			var got string
			h := autobuy.Middleware(w.gate(t), tt.action)(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				b, err := io.ReadAll(r.Body)
				assert.NoError(t, err)
				got = string(b)
			}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/chat", strings.NewReader(body)))
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
			assert.Equal(t, body, got)
		})
	}
}

// Action.Units: 0 means 1 (like a gate without WithUnits); a negative count
// is the caller's mistake (400), as WithUnits(-n) is an error; Action.Options
// carry per-request gate options.
func TestMiddlewareActionUnitsAndOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		action    autobuy.Action
		status    int
		units     int64
		metadata  map[string]string
		noAutoBuy bool
	}{
		{name: "units 0 is 1", action: autobuy.Action{}, status: http.StatusOK, units: 1},
		{name: "units 3", action: autobuy.Action{Units: 3}, status: http.StatusOK, units: 3},
		{name: "negative units: 400", action: autobuy.Action{Units: -2}, status: http.StatusBadRequest},
		{name: "per-request metadata", status: http.StatusOK, units: 1, metadata: map[string]string{"model": "small"},
			action: autobuy.Action{Options: []autobuy.GateOption{autobuy.WithUsageMetadata(map[string]string{"model": "small"})}}},
		{name: "per-request options win over the fields", status: http.StatusOK, units: 2,
			action: autobuy.Action{Units: 5, Options: []autobuy.GateOption{autobuy.WithUnits(2)}}},
		{name: "per-request auto-buy off: plan picker", status: http.StatusPaymentRequired, noAutoBuy: true,
			action: autobuy.Action{Options: []autobuy.GateOption{autobuy.WithAutoBuy(false)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000)
			if !tt.noAutoBuy {
				w.grantPlanCredits(t, 10_000)
			}
			a := tt.action
			a.Customer, a.Metric, a.EventID = quotastack.ExternalID(user), "chat_message", "m1"
			h := autobuy.Middleware(w.gate(t), func(*http.Request) (autobuy.Action, error) { return a, nil })(
				http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/chat", nil))
			require.Equal(t, tt.status, rec.Code, rec.Body.String())
			usage := w.usageFor("chat_message")
			if tt.status != http.StatusOK {
				assert.Empty(t, usage)
				assert.Zero(t, w.planGrants(), "nothing bought")
				if tt.noAutoBuy {
					assert.Equal(t, autobuy.ReasonPlanExpired, denialOf(t, rec).Reason)
				}
				return
			}
			require.Len(t, usage, 1)
			assert.Equal(t, tt.units, usage[0].Units)
			for k, v := range tt.metadata {
				assert.Equal(t, v, usage[0].Metadata[k])
			}
		})
	}
}
