package quotastack_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/quotastack/quotastack-go"
)

// IsOutage classifies by status class first: any 4xx but 429 is a definite
// answer, whatever its body or sentinel.
func TestIsOutageByStatusClass(t *testing.T) {
	t.Parallel()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	live := context.Background()
	api := func(status int) error { return &quotastack.APIError{StatusCode: status} }
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"nil", live, nil, false},
		{"invalid input", live, &quotastack.InputError{Field: "units", Reason: "negative"}, false},
		{"400", live, api(400), false},
		{"401", live, api(401), false},
		{"402", live, api(402), false},
		{"403", live, api(403), false},
		{"404", live, api(404), false},
		{"405", live, api(405), false},
		{"409", live, api(409), false},
		{"410", live, api(410), false},
		{"413", live, api(413), false},
		{"418", live, api(418), false},
		{"422", live, api(422), false},
		{"499", live, api(499), false},
		{"429 after retries", live, api(429), true},
		{"500", live, api(500), true},
		{"501", live, api(501), true},
		{"503", live, api(503), true},
		{"101 upgrade", live, api(101), true},
		{"302 redirect", live, api(302), true},
		{"200 that did not decode", live, api(200), true},
		{"403 wrapped", live, fmt.Errorf("plan: buying: %w", api(403)), false},
		{"503 wrapped", live, fmt.Errorf("plan: buying: %w", api(503)), true},
		{"transport error", live, &quotastack.RequestError{Method: "GET", Path: "/v1/x", Err: errors.New("connection refused")}, true},
		{"attempt timeout", live, &quotastack.RequestError{Err: context.DeadlineExceeded}, true},
		{"client-side rate limit", live, &quotastack.RequestError{Err: &quotastack.RateLimitError{Reason: "budget"}}, true},
		{"the caller cancelled", cancelled, &quotastack.RequestError{Err: context.Canceled}, false},
		{"the caller cancelled, nil ctx", nil, &quotastack.RequestError{Err: context.Canceled}, false},
		{"cancelled below a live caller", live, &quotastack.RequestError{Err: context.Canceled}, true},
		{"unreadable answer without a status", live, fmt.Errorf("%w: no customer_id", quotastack.ErrUnexpectedResponse), true},
		{"some other error", live, errors.New("journal: disk full"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tc.want, quotastack.IsOutage(tc.ctx, tc.err))
		})
	}
}
